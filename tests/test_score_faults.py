"""`flyt score` (and `flyt sample`) under faults: nothing lost, nothing stale, nothing hung, nothing left.

Issue 16 items 1-4 and 8 (score part): a second scorer extends an output instead of replacing it; an output
that is an input is refused; finished shards are recognised by a fingerprint of their inputs; a torch-fitted
scorer with --workers does not deadlock; SIGKILL of the parent leaves no live worker, and the next run
cleans the temporaries; outputs respect the umask; a missing column or mismatched dims is named.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests._fault_helpers import alive, descendants, fault_env, flyt_command, kill_all, wait_until
from tests._sample_helpers import small_pool, write_scores
from tests._score_helpers import make_flyt_pool, make_task

from flyt.cli.main import main
from flyt.io.arrays import fixed_size_list
from flyt.pipeline.score import score_pool
from flyt.scorers import ScorerOptions

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes through /proc")


def run(capsys, *args):
    code = main(["score", "--no-progress", *map(str, args)])
    return code, capsys.readouterr().err


def tables(directory) -> dict:
    return {p.name: pq.read_table(p) for p in sorted(directory.glob("*.parquet"))}


def snapshot(directory) -> dict:
    """name -> bytes of every file below ``directory`` (inputs must stay unchanged)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def hidden(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- 1. data loss
def test_second_scorer_extends_the_output(tmp_path):
    pool = make_flyt_pool(tmp_path / "pool", shards=2, rows=20)
    task = make_task(tmp_path / "task", n=20)
    out = tmp_path / "s"
    score_pool(pool, out, ["clip_score"], progress=False)
    first = tables(out)
    second = score_pool(pool, out, ["normsim_2"], tasks=[task], progress=False)
    assert second.scored == 2
    got = tables(out)
    for name, t in got.items():
        assert t.column_names == ["uid", "clip_score", "normsim_2"]
        assert t.column("uid").equals(first[name].column("uid"))
        assert t.column("clip_score").equals(first[name].column("clip_score"))  # not lost, not recomputed
    # Both columns now count as done; a recomputed column replaces only its own values.
    assert score_pool(pool, out, ["clip_score", "normsim_2"], tasks=[task], progress=False).skipped == 2
    opts = ScorerOptions(negclip_batches=2, negclip_batch_size=9)
    score_pool(pool, out, ["negclip_loss"], opts, seed=1, progress=False)
    before = tables(out)
    again = score_pool(pool, out, ["negclip_loss"], opts, seed=2, progress=False)  # other settings: rescored
    assert again.scored == 2
    after = tables(out)
    for name, t in after.items():
        assert t.column_names == ["uid", "clip_score", "normsim_2", "negclip_loss"]
        assert t.select(["uid", "clip_score", "normsim_2"]).equals(before[name].select(["uid", "clip_score", "normsim_2"]))
        assert not t.column("negclip_loss").equals(before[name].column("negclip_loss"))


def test_second_scorer_through_the_cli_keeps_the_first(tmp_path, capsys):
    pool = make_flyt_pool(tmp_path / "pool", shards=1, rows=12)
    task = make_task(tmp_path / "task", n=20)
    out = tmp_path / "s"
    assert run(capsys, "--pool", pool, "--out", out, "--scorer", "clip_score")[0] == 0
    assert run(capsys, "--pool", pool, "--out", out, "--scorer", "normsim_2", "--tasks", task)[0] == 0
    assert pq.read_table(out / "shard000.parquet").column_names == ["uid", "clip_score", "normsim_2"]


@pytest.mark.parametrize("which", ["scores", "tasks", "pool-symlink"])
def test_output_that_is_an_input_is_refused(tmp_path, capsys, which):
    pool = make_flyt_pool(tmp_path / "pool", shards=2, rows=10)
    task = make_task(tmp_path / "task", n=20)
    scores = tmp_path / "scores"
    score_pool(pool, scores, ["clip_score"], progress=False)
    (tmp_path / "link").symlink_to(pool)
    out = {"scores": scores, "tasks": task, "pool-symlink": tmp_path / "link"}[which]
    before = {d: snapshot(d) for d in (pool, task, scores)}
    code, err = run(capsys, "--pool", pool, "--out", out, "--scorer", "normsim_2", "--tasks", task, "--scores", scores)
    assert code == 2 and "is also an input" in err, err
    assert len(err.strip().splitlines()) == 1
    assert {d: snapshot(d) for d in (pool, task, scores)} == before


@pytest.mark.parametrize("target", ["shard", "npy", "json", "inside"])
def test_sample_counts_parquet_that_is_an_input_or_output_is_refused(tmp_path, capsys, target):
    uids, values = small_pool(200, seed=2)
    d = write_scores(tmp_path / "sc", uids, values, shards=2)
    out = tmp_path / "o" / "sub.npy"
    counts = {"shard": d / "part-000.parquet", "npy": out, "json": out.with_suffix(".json"), "inside": d / "counts.parquet"}[target]
    before = snapshot(d)
    code = main(["sample", "--scores", str(d), "--column", "clip", "--method", "topk", "--fraction", "0.5",
                 "--out", str(out), "--counts-parquet", str(counts)])
    err = capsys.readouterr().err
    assert code == 2 and "--counts-parquet" in err, err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(d) == before
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ----------------------------------------------------------------------------- 2. stale results
def test_replaced_pool_is_rescored(tmp_path):
    pool, out = tmp_path / "pool", tmp_path / "s"
    make_flyt_pool(pool, shards=2, rows=20, seed=0)
    score_pool(pool, out, ["clip_score"], progress=False)
    shutil.rmtree(pool)
    make_flyt_pool(pool, shards=2, rows=20, seed=1)  # same shape (stems, rows, dims), other uids
    again = score_pool(pool, out, ["clip_score"], progress=False)
    assert (again.scored, again.skipped) == (2, 0)
    for name, t in tables(out).items():
        assert t.column("uid").equals(pq.read_table(pool / name).column("uid"))


def test_replaced_pool_with_other_columns_kept_is_refused(tmp_path, capsys):
    """A kept column of an earlier pool cannot be joined to new uids: one line, nothing changed."""
    pool, out = tmp_path / "pool", tmp_path / "s"
    make_flyt_pool(pool, shards=1, rows=20, seed=0)
    score_pool(pool, out, ["clip_score", "caption"], progress=False)
    shutil.rmtree(pool)
    make_flyt_pool(pool, shards=1, rows=20, seed=1)
    before = snapshot(out)
    code, err = run(capsys, "--pool", pool, "--out", out, "--scorer", "clip_score")
    assert code == 2 and "shard000.parquet" in err and "caption_words" in err, err
    assert snapshot(out) == before


def test_changed_scorer_settings_rescore_only_what_they_change(tmp_path):
    import torch

    from flyt.models.checkpoint import save_scorer
    from flyt.models.scoring_head import SwiGLUScorer

    pool, out = make_flyt_pool(tmp_path / "pool", shards=2, rows=20), tmp_path / "s"
    torch.manual_seed(0)
    save_scorer(tmp_path / "flyt.pt", "flyt", "flyt_score", SwiGLUScorer(16, 16))
    first = score_pool(pool, out, ["clip_score", str(tmp_path / "flyt.pt")], progress=False)
    assert first.scored == 2
    assert score_pool(pool, out, ["clip_score"], seed=5, progress=False).skipped == 2  # clip_score has no seed
    old = tables(out)
    torch.manual_seed(1)
    save_scorer(tmp_path / "flyt.pt", "flyt", "flyt_score", SwiGLUScorer(16, 16))  # another scorer, same path
    assert score_pool(pool, out, ["clip_score", str(tmp_path / "flyt.pt")], progress=False).scored == 2
    for name, t in tables(out).items():
        assert not t.column("flyt_score").equals(old[name].column("flyt_score"))


# ----------------------------------------------------------------------------- 3. hang
def run_bounded(cmd, env=None, limit=300):
    """Run a child in its own session; a hang fails the test (and kills every process it made)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"hung: {' '.join(map(str, cmd))}")
    return proc.returncode, out, err


def test_torch_fitted_classifier_with_workers_does_not_hang(tmp_path):
    pytest.importorskip("sklearn")
    import torch

    from flyt.models.checkpoint import save_scorer
    from flyt.models.scoring_head import SwiGLUScorer

    # The parent fits the probe with torch (its OpenMP pool starts); the workers then run torch too.
    pool = make_flyt_pool(tmp_path / "pool", shards=4, rows=600, dim=32)
    task = make_task(tmp_path / "task", n=200, dim=32)
    torch.manual_seed(0)
    save_scorer(tmp_path / "flyt.pt", "flyt", "flyt_score", SwiGLUScorer(32, 32))
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env.pop("FLYT_FAULT_STALL", None)
    code, _, err = run_bounded(flyt_command("score", "--pool", pool, "--out", tmp_path / "s", "--scorer", "classifier",
                                            tmp_path / "flyt.pt", "--tasks", task, "--workers", "2", "--no-progress"), env)
    assert code == 0, err
    assert len(tables(tmp_path / "s")) == 4


# ----------------------------------------------------------------------------- 4. orphans and leftovers
def _kill_mid_run(tmp_path, cmd, stall, stalled):
    """Start ``cmd`` with ``stall`` armed, wait until ``stalled`` processes are parked, SIGKILL the parent,
    and return the pids that were below it (all of which must then die)."""
    env = fault_env(tmp_path, stall)
    marks = tmp_path / "fault-marks"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    below: set[int] = set()
    try:
        wait_until(lambda: len(list(marks.iterdir())) >= stalled or proc.poll() is not None, "the run to stall")
        assert proc.poll() is None, proc.stderr.read().decode()
        below = descendants(proc.pid)
        parked = {int(p.name) for p in marks.iterdir()}
        assert parked <= below | {proc.pid}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_until(lambda: not any(alive(p) for p in below), f"workers {sorted(p for p in below if alive(p))} to exit")
        return below
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(p for p in below if alive(p))  # only after a failure: the processes this run started
        proc.stderr.close()


@linux_only
def test_sigkill_score_leaves_no_worker_and_next_run_cleans_up(tmp_path, capsys):
    pool = make_flyt_pool(tmp_path / "pool", shards=4, rows=30)
    out = tmp_path / "s"
    cmd = flyt_command("score", "--pool", pool, "--out", out, "--scorer", "clip_score", "--workers", "2", "--no-progress")
    below = _kill_mid_run(tmp_path, cmd, "write:*.parquet", stalled=2)  # both workers parked mid-write
    assert len(below) >= 2
    left = hidden(out)
    assert any(n.startswith(".flyt-score-state-") for n in left) and any(n.endswith(".tmp") for n in left), left
    assert run(capsys, "--pool", pool, "--out", out, "--scorer", "clip_score", "--workers", "2")[0] == 0
    assert hidden(out) == []
    score_pool(pool, tmp_path / "clean", ["clip_score"], progress=False)
    assert snapshot(out) == snapshot(tmp_path / "clean")


def _sample_cmd(d, out, workers="2"):
    return flyt_command("sample", "--scores", d, "--column", "clip", "--method", "scs", "--penalty", "0.15",
                        "--total", "900", "--seed", "1", "--out", out, "--counts-parquet", out.with_name("counts.parquet"),
                        "--workers", workers)


@linux_only
@pytest.mark.parametrize("stall, stalled", [("sample-worker", 2), ("write:*.parquet", 1)])
def test_sigkill_sample_leaves_no_worker_and_next_run_cleans_up(tmp_path, stall, stalled):
    uids, values = small_pool(600, seed=4)
    d = write_scores(tmp_path / "sc", uids, values, shards=4)
    out = tmp_path / "o" / "sub.npy"
    out.parent.mkdir()
    _kill_mid_run(tmp_path, _sample_cmd(d, out), stall, stalled)
    if stall.startswith("write:"):  # killed between writing the temporaries and renaming them
        assert len([n for n in hidden(out.parent) if n.endswith(".tmp")]) == 3, hidden(out.parent)
    assert main([str(a) for a in _sample_cmd(d, out)[3:]]) == 0
    assert hidden(out.parent) == []
    clean = tmp_path / "clean" / "sub.npy"
    assert main([str(a) for a in _sample_cmd(d, clean, workers="1")[3:]]) == 0
    assert snapshot(out.parent) == snapshot(clean.parent)


# ----------------------------------------------------------------------------- 8. umask, columns, dims
def test_outputs_respect_the_umask(tmp_path):
    from flyt.io.atomic import atomic_dir, write_json

    pool = make_flyt_pool(tmp_path / "pool", shards=1, rows=5)
    old = os.umask(0o022)
    try:
        score_pool(pool, tmp_path / "s", ["clip_score"], progress=False)
        write_json({"a": 1}, tmp_path / "x.json")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("x")
        os.umask(0o027)
        write_json({"a": 1}, tmp_path / "y.json")
    finally:
        os.umask(old)
    assert (tmp_path / "s" / "shard000.parquet").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "y.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("drop", ["uid", "image_embedding"])
def test_missing_pool_column_is_named(tmp_path, capsys, drop):
    pool = make_flyt_pool(tmp_path / "pool", shards=1, rows=8)
    t = pq.read_table(pool / "shard000.parquet")
    pq.write_table(t.drop([drop]), pool / "shard000.parquet")
    code, err = run(capsys, "--pool", pool, "--out", tmp_path / "s", "--scorer", "clip_score")
    assert code == 2 and f"missing column '{drop}'" in err and "empty pool" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_image_and_text_of_other_dims_are_named(tmp_path, capsys):
    from flyt.io.uids import random_uids

    rng = np.random.default_rng(0)
    (tmp_path / "pool").mkdir()
    pq.write_table(pa.table({"uid": pa.array(random_uids(6, rng)),
                             "image_embedding": fixed_size_list(rng.standard_normal((6, 16)).astype(np.float32)),
                             "text_embedding": fixed_size_list(rng.standard_normal((6, 8)).astype(np.float32))}),
                   tmp_path / "pool" / "a.parquet")
    code, err = run(capsys, "--pool", tmp_path / "pool", "--out", tmp_path / "s", "--scorer", "clip_score")
    assert code == 2 and "a.parquet" in err and "16" in err and "8" in err and "clip_score" in err, err
    assert "broadcast" not in err and len(err.strip().splitlines()) == 1
    task = make_task(tmp_path / "task", n=10, dim=16)  # normsim reads the images only: fine
    assert run(capsys, "--pool", tmp_path / "pool", "--out", tmp_path / "s2", "--scorer", "normsim_2", "--tasks", task)[0] == 0


def test_fingerprint_is_in_the_parquet_metadata(tmp_path):
    pool = make_flyt_pool(tmp_path / "pool", shards=1, rows=5)
    score_pool(pool, tmp_path / "s", ["clip_score"], progress=False)
    meta = json.loads(pq.read_schema(tmp_path / "s" / "shard000.parquet").metadata[b"flyt.score"])
    assert meta["pool_shard"]["rows"] == 5 and set(meta["columns"]) == {"clip_score"}


def test_a_second_run_into_the_same_output_is_refused(tmp_path, capsys):
    """The lock that makes cleaning leftovers safe: while one run holds --out, another is refused."""
    from flyt.io.atomic import exclusive_lock
    from flyt.pipeline.score import LOCK_NAME

    pool = make_flyt_pool(tmp_path / "pool", shards=1, rows=5)
    out = tmp_path / "s"
    score_pool(pool, out, ["clip_score"], progress=False)
    before = snapshot(out)
    with exclusive_lock(out / LOCK_NAME, "a run"):
        code, err = run(capsys, "--pool", pool, "--out", out, "--scorer", "caption")
        assert code == 2 and "being written by another run" in err, err
        assert len(err.strip().splitlines()) == 1
    assert snapshot(out) == before and hidden(out) == []
