"""Training on a streamed pool (issue 11): rows drawn with replacement in blocks through a bounded
shuffle buffer. Deterministic for a seed, resumable bit for bit after a SIGKILL, bounded in the rows it
holds, uniform over the pool, the same for both pool layouts; and the training-hardening leftovers
(checkpoint temporaries removed on resume, fractional prompt indices refused)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tests._fault_helpers import fault_env, flyt_command, wait_until

import flyt
from _score_helpers import make_datacomp_pool
from flyt.cli.main import main
from flyt.errors import FlytError
from flyt.io.pool import IMAGE, TEXT, fraction_limit, load_pool, pool_shards
from flyt.io.pool_stream import ResampledPoolStream, census
from flyt.io.scores import write_score_shard
from flyt.io.tasks import load_task, write_task
from flyt.io.uids import uids_to_pairs
from flyt.models.checkpoint import load_scorer
from flyt.synthetic import make_planted, write_pool
from test_pool_formats import as_flyt_shards
from test_train import roc_auc

STREAM = {"pool_buffer": 1024, "pool_block": 64}
PLANTED_TRAIN = {"upstream_batch": 256, "downstream_batch": 128, "warmup_steps": 10, "scorer_lr": 0.01,
                 "reference_lr": 0.03}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"), n=3000, num_shards=3, dim=16, seed=0)


def config(planted, out, steps, **extra):
    return {"pool": str(planted["pool"]), "tasks": [str(planted["tasks"][0])], "out": str(out), "steps": steps,
            **PLANTED_TRAIN, **STREAM, **extra}


def cli_args(cfg: dict) -> list[str]:
    """The config as `flyt train` --set overrides."""
    return [a for k, v in cfg.items() for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}")]


def state_dict(path):
    return torch.load(path, weights_only=True)["state_dict"]


def same_scorer(a, b) -> bool:
    sa, sb = state_dict(a), state_dict(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def stream_of(pool_dir, pair="l14", buffer_rows=64, block_rows=16, seed=0, fraction=1.0, columns=(), dirs=()):
    shards = pool_shards(pool_dir, pair)
    c = census(shards, fraction, columns, dirs)
    dims = (512, 512) if shards[0].is_datacomp and pair == "b32" else (768, 768) if shards[0].is_datacomp \
        else shards[0].first_dims()
    return ResampledPoolStream(shards, c.kept, dims, buffer_rows=buffer_rows, block_rows=block_rows, seed=seed,
                               fraction=fraction, score_columns=columns, score_dirs=dirs)


# ------------------------------------------------------------------------------ the stream itself
def test_stream_is_deterministic_for_a_seed(planted):
    batches = [[stream.next_batch(32) for _ in range(20)] for stream in (stream_of(planted["pool"]),
                                                                       stream_of(planted["pool"]))]
    for a, b in zip(*batches):
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.image, b.image) and np.array_equal(a.text, b.text)
    other = [stream_of(planted["pool"], seed=1).next_batch(32) for _ in range(1)]
    assert not np.array_equal(other[0].ids, batches[0][0].ids)


@pytest.mark.parametrize("layout", ["flyt", "datacomp-stored", "datacomp-compressed"])
def test_stream_restores_to_the_same_batches(tmp_path, planted, layout):
    if layout == "flyt":
        pool, pair = planted["pool"], "l14"
    else:
        pool, pair = make_datacomp_pool(tmp_path / "dc", shards=3, rows=70, seed=3, compress=layout.endswith("compressed")), "b32"
    whole = stream_of(pool, pair)
    batches = [whole.next_batch(24) for _ in range(10)]
    killed = stream_of(pool, pair)
    for _ in range(4):
        killed.next_batch(24)
    state = killed.state()
    assert set(state) == {"version", "rng", "shards", "buffer", "pending"}
    assert state["buffer"].shape == (64, 2)  # identities, not data
    resumed = stream_of(pool, pair)
    resumed.restore(state)
    for a in batches[4:]:
        b = resumed.next_batch(24)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.uids, b.uids)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.text, b.text)


def test_buffer_never_holds_more_than_its_rows(tmp_path):
    pool = make_datacomp_pool(tmp_path / "dc", shards=4, rows=90, seed=1)
    stream = stream_of(pool, "b32", buffer_rows=100, block_rows=30)
    for _ in range(60):
        assert len(stream.next_batch(40)) == 40
        assert stream.peak_rows_held <= 100 + 30  # the buffer plus the block being consumed
    assert stream.blocks_read >= 60 * 40 // 30
    assert len(stream.state()["buffer"]) == 100 and len(stream.state()["pending"]) < 30


def test_rows_are_drawn_uniformly_across_unequal_shards(tmp_path):
    """A shard shorter than a block is read as often per row as a long one (P(s) ~ max(rows, block))."""
    rng = np.random.default_rng(0)
    from flyt.io.uids import random_uids

    n = 5 + 40 + 300
    data = {"uid": random_uids(n, rng), IMAGE: rng.normal(size=(n, 4)).astype(np.float32),
            TEXT: rng.normal(size=(n, 4)).astype(np.float32)}
    for s, (a, b) in enumerate([(0, 5), (5, 45), (45, n)]):
        write_pool({k: v[a:b] for k, v in data.items()}, tmp_path / "pool", prefix=f"s{s}-")
    stream = stream_of(tmp_path / "pool", buffer_rows=64, block_rows=16)
    rows = np.array([5, 40, 300])
    rate = stream.p * np.minimum(16, rows) / rows  # chance per block that a given row of each shard is read
    assert np.allclose(rate, rate[0], rtol=1e-12, atol=0), rate
    seen = np.concatenate([stream.next_batch(32).ids for _ in range(600)])
    per_row = np.bincount(seen[:, 0], minlength=3) / rows / (len(seen) / n)
    assert np.all(np.abs(per_row - 1) < 0.25), per_row  # loose: shard 0 gets ~50 blocks in 19,200 rows
    hits = np.zeros(n)
    offsets = np.array([0, 5, 45])
    np.add.at(hits, offsets[seen[:, 0]] + seen[:, 1], 1)
    assert hits.min() > 0  # every row of the pool is reached


def test_pool_fraction_filters_the_streamed_rows(planted):
    kept = set(load_pool(planted["pool"], fraction=0.3).uids.tolist())
    stream = stream_of(planted["pool"], fraction=0.3, buffer_rows=128, block_rows=32)
    seen = np.concatenate([stream.next_batch(64).uids for _ in range(200)])
    assert (uids_to_pairs(seen)["f0"] < fraction_limit(0.3)).all()
    assert set(seen.tolist()) == kept  # every kept row, and only those


def test_restore_refuses_a_changed_pool(tmp_path, planted):
    state = stream_of(planted["pool"]).state()
    write_pool(planted["data"], tmp_path / "four", num_shards=4)
    with pytest.raises(FlytError, match="pool changed since the checkpoint"):
        stream_of(tmp_path / "four").restore(state)


# ------------------------------------------------------------------------------ training on it
def test_streamed_training_is_deterministic_and_seeded(planted, tmp_path):
    runs = [flyt.train(config(planted, tmp_path / name, 12, seed=seed), progress=False).scorer
            for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    assert same_scorer(runs[0], runs[1])
    assert not same_scorer(runs[0], runs[2])
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["stream"]["buffer"].shape == (1024, 2)  # the stream's position travels in the checkpoint


def test_small_pools_stay_in_memory_by_default(planted, tmp_path):
    """pool_buffer auto: a pool under 2 GiB trains exactly as before streaming existed (no stream state)."""
    cfg = config(planted, tmp_path / "run", 3)
    del cfg["pool_buffer"], cfg["pool_block"]
    run = flyt.train(cfg, progress=False)
    assert "stream" not in torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert run.config.pool_buffer == "auto"


def test_planted_signal_is_found_when_streaming(planted, tmp_path):
    run = flyt.train(config(planted, tmp_path / "run", 150), progress=False)
    pool = load_pool(planted["pool"])
    auc = roc_auc(load_scorer(run.scorer).score_arrays(pool.image, pool.text), planted["data"]["planted"])
    assert auc >= 0.9, auc


def test_memory_bound_while_training(planted, tmp_path, monkeypatch):
    import flyt.training.upstream as upstream

    made = []

    class Counted(ResampledPoolStream):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(upstream, "ResampledPoolStream", Counted)
    flyt.train(config(planted, tmp_path / "run", 20, pool_buffer=512, pool_block=100), progress=False)
    (stream,) = made
    assert stream.blocks_read > 20 * 256 // 100
    assert 512 <= stream.peak_rows_held <= 512 + 100


def test_killed_streamed_run_resumes_to_the_same_scorer(planted, tmp_path):
    """SIGKILL in the middle of writing a checkpoint (step 30 of 60), then --resume: the same scorer, bit for
    bit, and the half-written checkpoint temporaries are gone."""
    steps = 60
    extra = {"checkpoint_every": 10, "keep_checkpoint_every": 30}
    whole = flyt.train(config(planted, tmp_path / "whole", steps, **extra), progress=False).scorer

    killed = tmp_path / "killed"
    args = ["train", "--no-progress", *cli_args(config(planted, killed, steps, **extra))]
    env = fault_env(tmp_path, "write:step_0000030.pt") | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(flyt_command(*args), env=env, stderr=subprocess.PIPE)
    marks = tmp_path / "fault-marks"
    try:
        wait_until(lambda: any(marks.iterdir()) or proc.poll() is not None, "the run to stall writing step 30")
        assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    assert not (killed / "scorer.pt").exists()
    assert torch.load(killed / "checkpoints" / "latest.pt", weights_only=True)["step"] == 30
    planted_tmp = killed / "checkpoints" / ".latest.pt.x1y2z3.tmp"  # as a kill during latest.pt's write leaves it
    planted_tmp.write_bytes(b"half a checkpoint")
    left = sorted(p.name for p in (killed / "checkpoints").glob(".*.tmp"))
    assert any(name.startswith(".step_0000030.pt.") for name in left) and planted_tmp.name in left

    assert main(args + ["--resume"]) == 0
    assert same_scorer(whole, killed / "scorer.pt")
    assert not list((killed / "checkpoints").glob(".*.tmp"))
    assert not (killed / ".train.lock").exists()
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))


def test_resume_refuses_another_buffer(planted, tmp_path, capsys):
    flyt.train(config(planted, tmp_path / "run", 4), progress=False)
    assert main(["train", "--no-progress", "--resume", *cli_args(config(planted, tmp_path / "run", 4, pool_buffer=2048))]) == 2
    assert "config key 'pool_buffer' is 2048 but the run" in capsys.readouterr().err


@pytest.mark.parametrize("pair", ["b32", "l14"])
def test_both_layouts_stream_the_same_rows(tmp_path, pair):
    """A DataComp metadata directory and the same rows as flyt shards: the stream names the same (shard, row)s,
    so a streamed run trains the same scorer on either."""
    datacomp = make_datacomp_pool(tmp_path / "datacomp", shards=3, rows=50, seed=11)
    copy = as_flyt_shards(datacomp, (tmp_path / "flyt").resolve(), pair)
    from test_pool_formats import make_task

    task = make_task(tmp_path / "task", {"b32": 512, "l14": 768}[pair])
    train = {"steps": 6, "upstream_batch": 32, "downstream_batch": 16, "warmup_steps": 2, "scorer_lr": 0.01,
             "reference_lr": 0.03, "scorer": {"hidden_dim": 16}, "pool_buffer": 64, "pool_block": 16}
    runs = {name: flyt.train({"pool": str(pool), "pair": pair, "tasks": [str(task)], "out": str(tmp_path / name),
                              **train}, progress=False).scorer for name, pool in (("dc", datacomp), ("flyt", copy))}
    assert same_scorer(runs["dc"], runs["flyt"])


def test_mflyt_streams_columns_from_the_pool_or_joined_from_score_dirs(planted, tmp_path):
    """M-FLYT: its inputs in the pool shards, or only in a differently sharded score directory (joined by uid):
    the same standardisation statistics as the in-memory pool's and the same trained mixer."""
    data = planted["data"]
    columns = ["noise_score", "informative_score"]
    write_pool({k: data[k] for k in ("uid", IMAGE, TEXT)}, tmp_path / "bare", num_shards=3)
    order = np.random.default_rng(0).permutation(len(data["uid"]))
    for s, rows in enumerate(np.array_split(order, 2)):
        write_score_shard(tmp_path / "scores", f"part{s}", data["uid"][rows], {c: data[c][rows] for c in columns})

    memory = load_pool(planted["pool"], embeddings=False, score_columns=columns)
    for pool, dirs in ((planted["pool"], ()), (tmp_path / "bare", (str(tmp_path / "scores"),))):
        c = census(pool_shards(pool), 1.0, columns, dirs)
        assert np.allclose(c.mean, memory.scores.mean(0), rtol=0, atol=1e-12)
        assert np.allclose(c.std, memory.scores.std(0), rtol=1e-12)

    runs = []
    for name, pool, dirs in (("in-pool", planted["pool"], []), ("joined", tmp_path / "bare", [str(tmp_path / "scores")])):
        cfg = config(planted, tmp_path / name, 100, mode="mflyt", score_columns=columns, scores=dirs)
        cfg["pool"] = str(pool)
        runs.append(flyt.train(cfg, progress=False).scorer)
    assert same_scorer(*runs)
    weights = load_scorer(runs[0]).model.weights()
    assert weights["informative_score"] > 3 * abs(weights["noise_score"]), weights


@pytest.mark.parametrize("update, needle", [
    ({"pool_buffer": 100}, "'pool_buffer' (100 rows) must hold at least one upstream batch (upstream_batch 256)"),
    ({"pool_buffer": "lots"}, "'pool_buffer' must be auto or a positive number of rows, got 'lots'"),
    ({"pool_buffer": 0}, "'pool_buffer' must be auto or a positive number of rows, got 0"),
    ({"pool_buffer": True}, "'pool_buffer' must be auto or a positive number of rows, got True"),
    ({"pool_block": 0}, "'pool_block' must be a positive integer, got 0"),
])
def test_bad_stream_keys(planted, tmp_path, update, needle):
    with pytest.raises(FlytError) as err:
        flyt.train(config(planted, tmp_path / "run", 2) | update, progress=False)
    assert needle in str(err.value)
    assert not (tmp_path / "run").exists()


def test_help_states_the_buffer_cost(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "pool_buffer" in out and "pool_block" in out
    assert "pool_buffer x (d_img + d_txt) x 4 bytes" in out


# ------------------------------------------------------------------------------ hardening leftovers
@pytest.mark.parametrize("column, value, needle", [
    ("template_index", 0.5, "row 0: template_index 0.5 is not an integer template index"),
    ("class_index", 1.25, "row 1: class_index 1.25 is not an integer class index"),
])
def test_fractional_prompt_indices_are_refused(tmp_path, column, value, needle):
    rng = np.random.default_rng(0)
    root = write_task(tmp_path / "task", ["cat", "dog"], ["a {c}"], rng.normal(size=(1, 2, 4)).astype(np.float32),
                      {"train": (rng.normal(size=(6, 4)), rng.integers(0, 2, 6))})
    path = root / "prompts.parquet"
    table = pq.read_table(path)
    values = table.column(column).to_numpy().astype(np.float64)
    values[0 if column == "template_index" else 1] = value
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(values)), path)
    with pytest.raises(FlytError) as err:
        load_task(root)
    assert str(err.value) == f"{path}: {needle}"


def test_whole_float_prompt_indices_are_accepted(tmp_path):
    rng = np.random.default_rng(0)
    root = write_task(tmp_path / "task", ["cat", "dog"], ["a {c}"], rng.normal(size=(1, 2, 4)).astype(np.float32),
                      {"train": (rng.normal(size=(6, 4)), rng.integers(0, 2, 6))})
    path = root / "prompts.parquet"
    table = pq.read_table(path)
    for column in ("template_index", "class_index"):
        i = table.schema.get_field_index(column)
        table = table.set_column(i, column, pa.array(table.column(column).to_numpy().astype(np.float64)))
    pq.write_table(table, path)
    assert load_task(root).prompts.shape == (1, 2, 4)


def test_streamed_pool_with_an_open_clip_reference_resumes(tmp_path, monkeypatch):
    """Raw-image reference (open_clip) on a streamed pool: each batch's uids come with the stream and are
    looked up in the pool webdataset; an interrupted run resumes to the uninterrupted one's scorer."""
    pytest.importorskip("open_clip")
    import flyt.training.loop as loop
    from _openclip_helpers import make_pool_wds, make_task_wds

    make_pool_wds(tmp_path / "wds", n=24, shards=2)
    make_task_wds(tmp_path / "task_wds")
    assert main(["embed", "pool", "--input", str(tmp_path / "wds"), "--out", str(tmp_path / "pool"), "--encoder",
                 "openclip:flyt-tiny-vit", "--shard-rows", "10", "--cache", str(tmp_path / "cache")]) == 0

    def cfg(out):
        return {"pool": str(tmp_path / "pool"), "tasks": [str(tmp_path / "task_wds")], "out": str(out),
                "reference": {"kind": "openclip", "model": "flyt-tiny-vit", "device": "cpu",
                              "pool_shards": [str(tmp_path / "wds" / "{00000..00001}.tar")]},
                "steps": 4, "warmup_steps": 1, "upstream_batch": 9, "downstream_batch": 7, "reference_lr": 1e-3,
                "scorer_lr": 1e-2, "dtype": "float64", "checkpoint_every": 1, "pool_buffer": 12, "pool_block": 5}

    whole = flyt.train(cfg(tmp_path / "whole"), progress=False).scorer
    real, calls = loop.meta_gradient, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "meta_gradient", interrupted)
    with pytest.raises(KeyboardInterrupt):
        flyt.train(cfg(tmp_path / "cut"), progress=False)
    monkeypatch.setattr(loop, "meta_gradient", real)
    assert torch.load(tmp_path / "cut" / "checkpoints" / "latest.pt", weights_only=True)["step"] == 2
    resumed = flyt.train(cfg(tmp_path / "cut"), resume=True, progress=False).scorer
    assert same_scorer(whole, resumed)
