"""The Python API runs the README's flow (train -> score -> sample) without the CLI, and gives the
same files as the CLI; bad input raises FlytError with the CLI's one line."""

from pathlib import Path

import numpy as np
import pytest
import torch

import flyt
from flyt.cli.main import main
from flyt.synthetic import make_planted

TRAIN = {"steps": 30, "upstream_batch": 128, "downstream_batch": 64, "warmup_steps": 5, "scorer_lr": 0.01,
         "reference_lr": 0.03, "checkpoint_every": 10}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"), n=1200, num_shards=3, dim=8, seed=3)


def test_readme_flow_in_python_equals_the_cli(planted, tmp_path):
    api, cli = tmp_path / "api", tmp_path / "cli"
    config = {"pool": str(planted["pool"]), "tasks": [str(t) for t in planted["tasks"]], "out": str(api / "run"), **TRAIN}
    run = flyt.train(config)
    assert isinstance(run, flyt.TrainResult)
    assert run.scorer == api / "run" / "scorer.pt" and run.scorer.is_file()
    assert run.config.steps == TRAIN["steps"]

    scored = flyt.score(pool=planted["pool"], out=api / "scores", scorers=[str(run.scorer), "clip_score"])
    assert isinstance(scored, flyt.ScoreResult)
    assert scored.columns == ["flyt", "clip_score"] and scored.rows == 1200 and not scored.failures
    drawn = flyt.sample(flyt.SampleConfig(scores=api / "scores", column="flyt", method="scs", penalty=0.15,
                                          total=3000, seed=7, out=api / "subset.npy"))
    assert drawn.total == 3000 and drawn.out == api / "subset.npy"
    assert drawn.summary["unique"] == len(drawn.pairs) and drawn.summary["total"] == 3000

    sets = [f"--set={k}={v}" for k, v in TRAIN.items()]
    assert main(["train", "--no-progress", f"--set=pool={planted['pool']}", f"--set=tasks=[{planted['tasks'][0]}]",
                 f"--set=out={cli / 'run'}", *sets]) == 0
    assert main(["score", "--pool", str(planted["pool"]), "--out", str(cli / "scores"), "--no-progress",
                 "--scorer", str(cli / "run" / "scorer.pt"), "clip_score"]) == 0
    assert main(["sample", "--scores", str(cli / "scores"), "--column", "flyt", "--method", "scs", "--penalty",
                 "0.15", "--total", "3000", "--seed", "7", "--out", str(cli / "subset.npy")]) == 0

    a, c = torch.load(run.scorer, weights_only=True), torch.load(cli / "run" / "scorer.pt", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, c["state_dict"][key]), key
    for stem in ("shard00000", "shard00001", "shard00002"):
        assert (api / "scores" / f"{stem}.parquet").read_bytes() == (cli / "scores" / f"{stem}.parquet").read_bytes()
    assert (api / "subset.npy").read_bytes() == (cli / "subset.npy").read_bytes()


def test_sample_in_memory_and_from_a_mapping(planted, tmp_path):
    flyt.score({"pool": planted["pool"], "out": tmp_path / "s", "scorers": ["clip_score"], "progress": False})
    r = flyt.sample({"scores": tmp_path / "s", "column": "clip_score", "method": "topk"}, fraction=0.25, fraction_rule="exact")
    assert r.out is None and r.total == 300 and np.all(r.counts == 1)
    assert not list(tmp_path.glob("*.npy"))


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda p, t: flyt.sample(scores=t, column="c", method="bogus"), "--method must be one of"),
        (lambda p, t: flyt.sample(scores=t, column="c", method="topk", fraction=0.1, out=t / "x.txt"),
         "--out must name a .npy file"),
        (lambda p, t: flyt.sample(scores=t, column="c", method="topk", colour="red"), "unknown option 'colour'"),
        (lambda p, t: flyt.score(pool=p, out=t / "o", scorers=["clip_score"], engine="spark"), "unknown engine 'spark'"),
        (lambda p, t: flyt.score(pool=p, out=t / "o", scorers=["nope"]), "nope"),
        (lambda p, t: flyt.score(pool=t / "missing", out=t / "o", scorers=["clip_score"]), "does not exist"),
        (lambda p, t: flyt.train({"pool": str(p), "tasks": [], "out": str(t / "r")}), "'tasks' is required"),
        (lambda p, t: flyt.train({"pool": str(p), "tasks": ["x"], "stepz": 3}), "unknown config key 'stepz'"),
    ],
)
def test_bad_input_raises_the_cli_line(planted, tmp_path, call, needle):
    with pytest.raises(flyt.FlytError, match=None) as info:
        call(planted["pool"], tmp_path)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_import_flyt_is_light():
    """``import flyt`` loads no torch and no pipeline until an API name is used."""
    import subprocess
    import sys

    code = "import sys, flyt; print('torch' in sys.modules, 'flyt.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    assert set(flyt.__all__) >= {"train", "score", "sample", "embed", "demo", "FlytError"}
    assert Path(flyt.__file__).parent.name == "flyt"
