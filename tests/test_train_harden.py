"""`flyt train` against hostile input and faults (issue 16): every bad config, file or checkpoint is one
line naming the key or file, exit 2 (1 for an environment failure such as a full disk), no traceback,
no run directory or scorer.pt left behind, inputs unchanged; a resume must match the run's config."""

import errno
import hashlib
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from flyt.cli.main import main
from flyt.errors import FlytError
from flyt.io.tasks import load_task
from flyt.synthetic import make_planted

BASE = {"pool": "pool", "tasks": ["task0"], "out": "run", "steps": 2, "upstream_batch": 32, "downstream_batch": 16}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    make_planted(root, n=160, num_shards=2, dim=8, seed=0)
    return root


@pytest.fixture
def world(planted, tmp_path):
    """A private copy of the planted pool and task (cases mutate them) and the base config."""
    shutil.copytree(planted / "pool", tmp_path / "pool")
    shutil.copytree(planted / "task0", tmp_path / "task0")
    write_config(tmp_path / "c.yaml", BASE)
    return tmp_path


def write_config(path, mapping):
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


def merged(base, patch):
    out = dict(base)
    for key, value in patch.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def snapshot(*roots):
    """Every file under the roots -> a digest of its bytes (and every directory, by name)."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = "dir"
            for f in filenames:
                p = os.path.join(dirpath, f)
                out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def train(capsys, *args):
    code = main(["train", "--no-progress", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def assert_one_line(err, code, expected_code, needles):
    assert code == expected_code, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("flyt train: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in err, err


# --------------------------------------------------------------------------------------------
# The bad-input table: malformed configs (each a patch of the base config, written as YAML)

CONFIG_CASES = [
    ("seed-string", {"seed": "abc"}, ["'seed'", "abc"]),
    ("seed-negative", {"seed": -1}, ["'seed'", "-1"]),
    ("seed-fraction", {"seed": 1.5}, ["'seed'", "1.5"]),
    ("seed-bool", {"seed": True}, ["'seed'"]),
    ("seed-huge", {"seed": 2**64}, ["'seed'"]),
    ("hidden-dim-negative", {"scorer": {"hidden_dim": -3}}, ["'scorer.hidden_dim'", "-3"]),
    ("hidden-dim-zero", {"scorer": {"hidden_dim": 0}}, ["'scorer.hidden_dim'"]),
    ("depth-zero", {"scorer": {"depth": 0}}, ["'scorer.depth'"]),
    ("depth-fraction", {"scorer": {"depth": 1.5}}, ["'scorer.depth'"]),
    ("init-noise-negative", {"scorer": {"init_noise": -0.1}}, ["'scorer.init_noise'"]),
    ("init-noise-nan", {"scorer": {"init_noise": float("nan")}}, ["'scorer.init_noise'"]),
    ("scorer-weight-decay-negative", {"scorer": {"weight_decay": -1}}, ["'scorer.weight_decay'"]),
    ("cosine-init-string", {"scorer": {"cosine_init": "no"}}, ["'scorer.cosine_init'", "bool"]),
    ("cosine-init-int", {"scorer": {"cosine_init": 1}}, ["'scorer.cosine_init'", "bool"]),
    ("update-reference-maybe", {"update_reference": "maybe"}, ["'update_reference'", "bool"]),
    ("beta1-string", {"reference": {"beta1": "abc"}}, ["'reference.beta1'", "abc"]),
    ("beta1-one", {"reference": {"beta1": 1.0}}, ["'reference.beta1'", "[0, 1)"]),
    ("beta2-negative", {"reference": {"beta2": -0.1}}, ["'reference.beta2'"]),
    ("eps-zero", {"reference": {"eps": 0}}, ["'reference.eps'"]),
    ("eps-inf", {"reference": {"eps": float("inf")}}, ["'reference.eps'"]),
    ("reference-weight-decay-negative", {"reference": {"weight_decay": -0.5}}, ["'reference.weight_decay'"]),
    ("reference-logit-scale-nan", {"reference": {"logit_scale": float("nan")}}, ["'reference.logit_scale'"]),
    ("embed-dim-zero", {"reference": {"embed_dim": 0}}, ["'reference.embed_dim'"]),
    ("embed-dim-negative", {"reference": {"embed_dim": -4}}, ["'reference.embed_dim'"]),
    ("reference-init-bogus", {"reference": {"init": "bogus"}}, ["'reference.init'"]),
    ("chunk-size-zero", {"reference": {"chunk_size": 0}}, ["'reference.chunk_size'"]),
    ("optimizer-bogus", {"reference": {"optimizer": "adam"}}, ["'reference.optimizer'"]),
    ("reference-lr-inf", {"reference_lr": float("inf")}, ["'reference_lr'", "inf"]),
    ("reference-lr-negative", {"reference_lr": -1e-3}, ["'reference_lr'"]),
    ("scorer-lr-nan", {"scorer_lr": float("nan")}, ["'scorer_lr'"]),
    ("scorer-lr-overflows-float32", {"scorer_lr": 1e300}, ["'scorer_lr'", "float32"]),
    ("scale-lr-inf", {"downstream_scale_lr": float("inf")}, ["'downstream_scale_lr'"]),
    ("downstream-logit-scale-inf", {"downstream_logit_scale": float("-inf")}, ["'downstream_logit_scale'"]),
    ("pool-fraction-zero", {"pool_fraction": 0}, ["'pool_fraction'"]),
    ("pool-fraction-above-one", {"pool_fraction": 1.5}, ["'pool_fraction'"]),
    ("pool-fraction-nan", {"pool_fraction": float("nan")}, ["'pool_fraction'"]),
    ("warmup-negative", {"warmup_steps": -1}, ["'warmup_steps'"]),
    ("checkpoint-every-zero", {"checkpoint_every": 0}, ["'checkpoint_every'"]),
    ("upstream-batch-fraction", {"upstream_batch": 2.5}, ["'upstream_batch'"]),
    ("steps-string", {"steps": "many"}, ["'steps'"]),
    ("score-column-twice", {"mode": "mflyt", "score_columns": ["informative_score", "informative_score"]},
     ["'score_columns'", "informative_score", "twice"]),
    ("task-twice", {"tasks": ["task0", "task0"]}, ["'tasks'", "twice"]),
    ("dtype-half", {"dtype": "float16"}, ["'dtype'"]),
    ("name-number", {"name": 123}, ["'name'"]),
    ("mode-number", {"mode": 3}, ["'mode'"]),
    ("unknown-key", {"stepz": 3}, ["'stepz'"]),
    ("pool-missing", {"pool": "nope"}, ["nope"]),
    ("task-missing", {"tasks": ["nope"]}, ["nope"]),
    ("scores-missing", {"scores": ["nope"]}, ["nope"]),
]


@pytest.mark.parametrize("patch, needles", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(world, capsys, patch, needles):
    write_config(world / "c.yaml", merged(BASE, patch))
    before = snapshot(world)
    code, err = train(capsys, world / "c.yaml")
    assert_one_line(err, code, 2, needles)
    assert snapshot(world) == before  # no run directory, nothing changed


# Malformed files and command lines: setup(root) -> (argv, needles, exit code)

def _non_utf8(root):
    (root / "c.yaml").write_bytes(b"pool: pool\ntasks: [task0]\nname: caf\xe9\n")
    return [root / "c.yaml"], [root / "c.yaml", "UTF-8"], 2


def _yaml_list(root):
    (root / "c.yaml").write_text("- pool\n- tasks\n")
    return [root / "c.yaml"], [root / "c.yaml", "mapping"], 2


def _yaml_is_directory(root):
    (root / "cfgdir").mkdir()
    return [root / "cfgdir"], [root / "cfgdir"], 2


def _yaml_garbage(root):
    (root / "c.yaml").write_bytes(b"\x00\x01pool: [\n")
    return [root / "c.yaml"], [root / "c.yaml"], 2


def _out_is_a_file(root):
    (root / "taken").write_text("mine\n")
    return [root / "c.yaml", "--set", f"out={root / 'taken'}"], ["'out'", root / "taken"], 2


def _out_under_a_file(root):
    (root / "taken").write_text("mine\n")
    return [root / "c.yaml", "--set", f"out={root / 'taken' / 'run'}"], ["'out'", root / "taken"], 2


def _set_without_value(root):
    return [root / "c.yaml", "--set", "seed"], ["--set", "seed"], 2


def _set_inf(root):
    return [root / "c.yaml", "--set", "reference_lr=.inf"], ["'reference_lr'"], 2


def _relabel(root, values, split="train"):
    path = root / "task0" / f"{split}.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_numpy().astype(np.float64)
    for row, value in values.items():
        labels[row] = value
    pq.write_table(table.set_column(table.column_names.index("label"), "label", pa.array(labels)), path)
    return path


def _label_half(root):
    path = _relabel(root, {3: 0.5})
    return [root / "c.yaml"], [path, "row 3", "0.5"], 2


def _label_one_and_a_half(root):
    path = _relabel(root, {0: 1.5})
    return [root / "c.yaml"], [path, "row 0", "1.5"], 2


def _label_nan(root):
    path = _relabel(root, {5: float("nan")})
    return [root / "c.yaml"], [path, "row 5"], 2


def _label_in_test_split(root):
    path = _relabel(root, {2: 2.25}, split="test")
    return [root / "c.yaml"], [path, "row 2"], 2


def _label_strings(root):
    path = root / "task0" / "train.parquet"
    table = pq.read_table(path)
    strings = pa.array([str(v) for v in table.column("label").to_pylist()])
    pq.write_table(table.set_column(table.column_names.index("label"), "label", strings), path)
    return [root / "c.yaml"], [path, "'label'"], 2


FILE_CASES = [_non_utf8, _yaml_list, _yaml_is_directory, _yaml_garbage, _out_is_a_file, _out_under_a_file,
              _set_without_value, _set_inf, _label_half, _label_one_and_a_half, _label_nan, _label_in_test_split,
              _label_strings]


@pytest.mark.parametrize("setup", FILE_CASES, ids=[f.__name__.strip("_") for f in FILE_CASES])
def test_bad_file(world, capsys, setup):
    argv, needles, expected = setup(world)
    before = snapshot(world)
    code, err = train(capsys, *argv)
    assert_one_line(err, code, expected, needles)
    assert snapshot(world) == before
    assert not (world / "run").exists()


def test_integral_float_labels_are_accepted(world):
    """Labels 2.0 in a float column are taken as 2; 2.5 is refused (naming the file and row)."""
    plain = load_task(world / "task0")
    _relabel(world, {})  # the same labels, as float64
    assert np.array_equal(load_task(world / "task0").train.labels, plain.train.labels)
    path = _relabel(world, {7: 2.5})
    with pytest.raises(FlytError, match="row 7"):
        load_task(world / "task0")
    assert path.name == "train.parquet"


# --------------------------------------------------------------------------------------------
# Runs that start well and must not end well


@pytest.mark.parametrize("out", ["run", "new/deeper/run"])
def test_run_with_no_applied_step_fails(world, capsys, out):
    """A log logit scale of 1e5 is finite, but exp() of it is not: every step is skipped; no scorer.pt,
    and no directory the run created."""
    before = snapshot(world)
    code, err = train(capsys, world / "c.yaml", "--set", "downstream_logit_scale=1e5", "--set", f"out={out}")
    assert_one_line(err, code, 2, ["no training step was applied", "2 steps"])
    assert snapshot(world) == before  # the run directory is gone with its untrained checkpoint


@pytest.mark.parametrize("writer", ["write_text", "torch_save"])
def test_disk_full_is_one_line_and_leaves_no_run(world, capsys, monkeypatch, writer):
    import flyt.training.loop as loop

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(world / "run"))

    monkeypatch.setattr(loop, writer, full)
    before = snapshot(world)
    code, err = train(capsys, world / "c.yaml")
    assert_one_line(err, code, 1, ["No space left on device"])
    assert snapshot(world) == before


def test_disk_full_at_the_end_keeps_the_checkpoint_to_resume(world, capsys, monkeypatch):
    import flyt.training.loop as loop

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(world / "run" / "scorer.pt"))

    with monkeypatch.context() as m:
        m.setattr(loop, "save_scorer", full)
        code, err = train(capsys, world / "c.yaml")
    assert_one_line(err, code, 1, ["No space left on device", "scorer.pt"])
    assert (world / "run" / "checkpoints" / "latest.pt").is_file() and not (world / "run" / "scorer.pt").exists()
    code, err = train(capsys, world / "c.yaml", "--resume")
    assert code == 0 and (world / "run" / "scorer.pt").is_file(), err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode")
def test_read_only_out(world, capsys):
    (world / "locked").mkdir()
    os.chmod(world / "locked", 0o500)
    try:
        code, err = train(capsys, world / "c.yaml", "--set", f"out={world / 'locked' / 'run'}")
        assert code in (1, 2) and len(err.splitlines()) == 1 and str(world / "locked") in err, err
        assert not (world / "locked" / "run").exists()
    finally:
        os.chmod(world / "locked", 0o700)


def test_out_on_a_read_only_parent_is_refused_before_any_work(world, capsys, monkeypatch):
    """What a read-only mount or directory reports (os.access), whoever runs the tests."""
    import flyt.training.run_dir as run_dir

    real = os.access
    monkeypatch.setattr(run_dir.os, "access", lambda p, mode: False if str(p) == str(world) else real(p, mode))
    before = snapshot(world)
    code, err = train(capsys, world / "c.yaml")
    assert_one_line(err, code, 2, ["'out'", f"{world} is not writable"])
    assert snapshot(world) == before


def test_permission_denied_while_writing_is_one_line(world, capsys, monkeypatch):
    import flyt.training.loop as loop

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(world / "run" / "config.yaml"))

    monkeypatch.setattr(loop, "write_text", denied)
    code, err = train(capsys, world / "c.yaml")
    assert_one_line(err, code, 1, ["Permission denied", "config.yaml"])
    assert not (world / "run").exists()


# --------------------------------------------------------------------------------------------
# --resume: the config must be the run's (but for `steps`), the checkpoint must be this run's kind


@pytest.fixture(scope="module")
def runs(planted, tmp_path_factory):
    """Finished 2-step runs (flyt depth 1, flyt depth 2, mflyt) over the shared planted data."""
    root = tmp_path_factory.mktemp("runs")
    common = {**BASE, "pool": str(planted / "pool"), "tasks": [str(planted / "task0")]}
    variants = {"flyt": {}, "deep": {"scorer": {"depth": 2}},
                "mflyt": {"mode": "mflyt", "score_columns": ["informative_score", "noise_score"]}}
    for name, patch in variants.items():
        cfg = write_config(root / f"{name}.yaml", merged(common, {**patch, "out": str(root / name)}))
        assert main(["train", "--no-progress", str(cfg)]) == 0
    return root


@pytest.fixture
def killed(runs, tmp_path):
    """A copy of the flyt run as a kill after its last checkpoint leaves it: no scorer.pt."""
    shutil.copytree(runs / "flyt", tmp_path / "run")
    (tmp_path / "run" / "scorer.pt").unlink()
    shutil.copy(runs / "flyt.yaml", tmp_path / "c.yaml")
    return tmp_path


def resume(capsys, killed, *extra):
    return train(capsys, killed / "c.yaml", "--set", f"out={killed / 'run'}", "--resume", *extra)


@pytest.mark.parametrize("override, needles", [
    ("seed=99", ["config key 'seed' is 99 but the run in {run} was started with 0"]),
    ("mode=mflyt", ["config key 'mode' is 'mflyt'", "'flyt'"]),
    ("scorer.depth=2", ["config key 'scorer.depth' is 2", "with 1"]),
    ("reference_lr=0.5", ["config key 'reference_lr' is 0.5"]),
    ("update_reference=false", ["config key 'update_reference' is False"]),
])
def test_resume_refuses_a_changed_config(killed, capsys, planted, override, needles):
    args = ["--set", override] + (["--set", "score_columns=[informative_score]"] if "mflyt" in override else [])
    before = snapshot(killed, planted)
    code, err = resume(capsys, killed, *args)
    assert_one_line(err, code, 2, ["--resume: "] + [n.format(run=killed / "run") for n in needles])
    assert snapshot(killed, planted) == before and not (killed / "run" / "scorer.pt").exists()


def test_resume_with_more_steps_updates_config_yaml(killed, capsys):
    old = yaml.safe_load((killed / "run" / "config.yaml").read_text())
    code, err = resume(capsys, killed, "--set", "steps=4")
    assert code == 0, err
    new = yaml.safe_load((killed / "run" / "config.yaml").read_text())
    assert new == {**old, "out": str(killed / "run"), "steps": 4}
    rows = (killed / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4 and torch.load(killed / "run" / "checkpoints" / "latest.pt", weights_only=True)["step"] == 4


def test_resume_to_fewer_steps_than_done_is_refused(killed, capsys):
    before = snapshot(killed)
    code, err = resume(capsys, killed, "--set", "steps=1")
    assert_one_line(err, code, 2, ["'steps'", "1", "step 2"])
    assert snapshot(killed) == before


def test_resume_unchanged_finishes(killed, capsys):
    code, err = resume(capsys, killed)
    assert code == 0 and (killed / "run" / "scorer.pt").is_file(), err


def _truncated(latest, runs):
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])


def _garbage(latest, runs):
    latest.write_bytes(b"not a checkpoint at all" * 10)


def _empty(latest, runs):
    latest.write_bytes(b"")


def _tensor(latest, runs):
    torch.save(torch.zeros(3), latest)


def _list(latest, runs):
    torch.save([1, 2, 3], latest)


def _missing_keys(latest, runs):
    torch.save({"step": 1, "scorer": {}}, latest)


def _step_not_an_int(latest, runs):
    ckpt = torch.load(latest, weights_only=True)
    torch.save({**ckpt, "step": "two"}, latest)


def _deeper_scorer(latest, runs):
    shutil.copy(runs / "deep" / "checkpoints" / "latest.pt", latest)


def _deeper_scorer_without_config(latest, runs):
    ckpt = torch.load(runs / "deep" / "checkpoints" / "latest.pt", weights_only=True)
    ckpt.pop("config")
    torch.save(ckpt, latest)


def _mflyt_checkpoint(latest, runs):
    shutil.copy(runs / "mflyt" / "checkpoints" / "latest.pt", latest)


def _mflyt_checkpoint_without_config(latest, runs):
    ckpt = torch.load(runs / "mflyt" / "checkpoints" / "latest.pt", weights_only=True)
    ckpt.pop("config")
    torch.save(ckpt, latest)


def _reference_of_another_shape(latest, runs):
    ckpt = torch.load(latest, weights_only=True)
    ckpt["reference"] = {k: torch.zeros(5, 5) if v.ndim == 2 else v for k, v in ckpt["reference"].items()}
    torch.save(ckpt, latest)


def _directory(latest, runs):
    latest.unlink()
    latest.mkdir()


BAD_CHECKPOINTS = [_truncated, _garbage, _empty, _tensor, _list, _missing_keys, _step_not_an_int, _deeper_scorer,
                   _deeper_scorer_without_config, _mflyt_checkpoint, _mflyt_checkpoint_without_config,
                   _reference_of_another_shape, _directory]


@pytest.mark.parametrize("spoil", BAD_CHECKPOINTS, ids=[f.__name__.strip("_") for f in BAD_CHECKPOINTS])
def test_resume_from_a_bad_checkpoint(killed, runs, capsys, spoil):
    latest = killed / "run" / "checkpoints" / "latest.pt"
    spoil(latest, runs)
    before = snapshot(killed)
    code, err = resume(capsys, killed)
    assert_one_line(err, code, 2, [latest])
    assert snapshot(killed) == before and not (killed / "run" / "scorer.pt").exists()


def test_config_yaml_that_is_not_a_config_is_named(killed, capsys):
    (killed / "run" / "config.yaml").write_text("- just\n- a list\n")
    before = snapshot(killed)
    code, err = resume(capsys, killed)
    assert_one_line(err, code, 2, [killed / "run" / "config.yaml"])
    assert snapshot(killed) == before


def test_a_finished_run_is_not_overwritten_without_resume(killed, capsys):
    """A run directory holding scorer.pt but no checkpoints still holds a run."""
    shutil.copy(killed / "run" / "checkpoints" / "latest.pt", killed / "run" / "scorer.pt")
    shutil.rmtree(killed / "run" / "checkpoints")
    before = snapshot(killed)
    code, err = train(capsys, killed / "c.yaml", "--set", f"out={killed / 'run'}")
    assert_one_line(err, code, 2, ["already holds a run; pass --resume"])
    assert snapshot(killed) == before
