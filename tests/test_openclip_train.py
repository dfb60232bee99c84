"""Raw-image FLYT with an open_clip reference: data-parallel equality, resume, and the whole CLI path."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("open_clip")

from _openclip_helpers import make_pool_wds, make_task_wds, png  # noqa: E402
from flyt.cli.main import main  # noqa: E402
from flyt.errors import FlytError  # noqa: E402
from flyt.io.uids import content_uid  # noqa: E402
from flyt.training.config import TrainConfig, load_config  # noqa: E402
from flyt.training.loop import build_scorer, train  # noqa: E402

ENCODER = "openclip:flyt-tiny-vit"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("oc")
    make_pool_wds(root / "wds", n=24, shards=2)
    make_task_wds(root / "task_wds")
    cache = ["--cache", str(root / "cache")]
    assert main(["embed", "pool", "--input", str(root / "wds"), "--out", str(root / "pool"),
                 "--encoder", ENCODER, "--shard-rows", "10", *cache]) == 0
    assert main(["embed", "task", "--input", str(root / "task_wds"), "--out", str(root / "task"),
                 "--encoder", ENCODER, *cache]) == 0
    return root


def config(root: Path, out: Path, **extra) -> dict:
    cfg = {
        "pool": str(root / "pool"),
        "tasks": [str(root / "task_wds")],
        "reference": {"kind": "openclip", "model": "flyt-tiny-vit",
                      "pool_shards": [str(root / "wds" / "{00000..00001}.tar")], "device": "cpu"},
        "steps": 3, "warmup_steps": 1, "upstream_batch": 9, "downstream_batch": 7,
        "reference_lr": 1e-3, "scorer_lr": 1e-2, "dtype": "float64", "checkpoint_every": 1, "out": str(out),
    }
    cfg.update(extra)
    return cfg


def scorer_state(run: Path) -> dict:
    return torch.load(run / "scorer.pt", weights_only=False)


def assert_same_scorer(a: Path, b: Path, atol: float = 1e-10):
    sa, sb = scorer_state(a)["state_dict"], scorer_state(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=atol)


def test_embed_webdataset_pool_and_task(data):
    import pyarrow.parquet as pq

    pool = pq.read_table(data / "pool" / "part-00000.parquet")
    # one output shard per input tar (12 + 12 pairs), uids equal to embed_pairs' content uids
    assert pool.num_rows == 12 and {"uid", "text", "image_embedding", "text_embedding"} <= set(pool.column_names)
    first = pq.read_table(data / "pool" / "part-00001.parquet").column("uid")[0].as_py()
    assert first == content_uid(hashlib.sha1(png("red", 12)).digest(), "a red square")
    assert len(pool.column("image_embedding")[0]) == 32
    assert (data / "task" / "prompts.parquet").is_file() and (data / "task" / "test.parquet").is_file()
    assert pq.read_table(data / "task" / "prompts.parquet").num_rows == 8  # 2 templates x 4 classes


def test_embed_datacomp_npz(data, tmp_path):
    import pyarrow.parquet as pq

    make_pool_wds(tmp_path / "w", n=5, shards=1, with_json=True)
    assert main(["embed", "pool", "--input", str(tmp_path / "w" / "*.tar"), "--out", str(tmp_path / "dc"),
                 "--encoder", ENCODER, "--format", "datacomp", "--cache", str(data / "cache")]) == 0
    npz = np.load(tmp_path / "dc" / "part-00000.npz")
    assert npz["b32_img"].shape == (5, 32) and npz["b32_txt"].dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(npz["b32_img"].astype(np.float32), axis=1), 1, atol=2e-3)
    uids = pq.read_table(tmp_path / "dc" / "part-00000.parquet").column("uid").to_pylist()
    assert uids == ["%032x" % (i + 1) for i in range(5)]  # DataComp's uid from the .json


@pytest.mark.parametrize("kind", ["openclip", "embedding"])
def test_two_process_gloo_equals_one_process(data, tmp_path, kind):
    extra = {} if kind == "openclip" else {"tasks": [str(data / "task")], "reference": {"kind": "embedding"}}
    one = tmp_path / "one"
    train(config(data, one, **extra), progress=False)
    two = tmp_path / "two"
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(config(data, two, **extra)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "flyt", "train", str(cfg_path), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_scorer(one, two)
    # rank 0 alone wrote the metrics, one row per step, and they agree with the single process
    rows_one = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    rows_two = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_two] == [1, 2, 3]
    for a, b in zip(rows_one, rows_two):
        assert b["downstream_loss"] == pytest.approx(a["downstream_loss"], rel=1e-9)
        assert b["upstream_loss"] == pytest.approx(a["upstream_loss"], rel=1e-9)
    # the scorer really moved (the comparison is not between two untouched inits)
    assert not any(r["skipped"] for r in rows_one)
    torch.manual_seed(0)
    init = build_scorer(TrainConfig.from_dict(config(data, one, **extra)), None, 32, 32).state_dict()
    final = scorer_state(one)["state_dict"]
    assert max(float((final[k] - init[k]).abs().max()) for k in init) > 1e-3


def test_resume_matches_uninterrupted(data, tmp_path):
    straight = tmp_path / "straight"
    train(config(data, straight), progress=False)
    cut = tmp_path / "cut"
    train(config(data, cut, steps=2), progress=False)
    train(config(data, cut, steps=3), resume=True, progress=False)
    assert_same_scorer(straight, cut, atol=1e-12)
    ckpt = torch.load(cut / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["step"] == 3 and "visual.conv1.weight" in ckpt["reference"]


def test_end_to_end_cli_train_score_sample(data, tmp_path):
    cfg = config(data, tmp_path / "run", dtype="float32")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) == 0
    assert main(["score", "--pool", str(data / "pool"), "--out", str(tmp_path / "scores"),
                 "--scorer", str(tmp_path / "run" / "scorer.pt"), "--no-progress"]) == 0
    assert main(["sample", "--scores", str(tmp_path / "scores"), "--column", "flyt", "--method", "scs",
                 "--total", "40", "--penalty", "0.5", "--out", str(tmp_path / "subset.npy")]) == 0
    subset = np.load(tmp_path / "subset.npy")
    assert len(subset) == 40 and subset.dtype.names == ("f0", "f1")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(r["downstream_loss"]) for r in rows)


def test_bad_inputs_are_one_line_errors(data, tmp_path, capsys):
    with pytest.raises(FlytError, match="reference.pool_shards"):
        load_config(None, [f"pool={data / 'pool'}", f"tasks=[{data / 'task_wds'}]", "reference.kind=openclip"])
    # a pool uid missing from the webdataset
    with pytest.raises(FlytError, match="is not in the webdataset"):
        train(config(data, tmp_path / "r", reference={"kind": "openclip", "model": "flyt-tiny-vit",
                                                       "pool_shards": [str(data / "wds" / "00000.tar")]}))
    with pytest.raises(FlytError, match="no such local file"):
        train(config(data, tmp_path / "r2", reference={"kind": "openclip", "model": "flyt-tiny-vit",
                                                        "weights": str(tmp_path / "nope.pt"),
                                                        "pool_shards": [str(data / "wds")]}))
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    assert main(["embed", "pool", "--input", str(tmp_path / "junk.tar"), "--out", str(tmp_path / "o"),
                 "--encoder", ENCODER]) == 2
    err = capsys.readouterr().err
    assert "junk.tar: unreadable webdataset shard" in err and err.count("\n") == 1
    assert main(["embed", "pool", "--input", str(data / "wds"), "--out", str(tmp_path / "o"),
                 "--encoder", "openclip:no-such-model"]) == 2
    assert "unknown" in capsys.readouterr().err
    # the same DataComp uid in two shards
    make_pool_wds(tmp_path / "d1", n=2, shards=1, with_json=True)
    make_pool_wds(tmp_path / "d2", n=2, shards=1, with_json=True)
    assert main(["embed", "pool", "--input", f"{tmp_path}/d*/*.tar", "--out", str(tmp_path / "o"),
                 "--encoder", ENCODER, "--cache", str(data / "cache")]) == 2
    assert "duplicate uid 00000000000000000000000000000001" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
