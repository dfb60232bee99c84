"""Issue 11's end-to-end acceptance, through the CLI, on a generated DataComp-layout directory.

A few hundred pairs as real webdataset tars (JPEG bytes, ``.txt``, ``.json`` with the uid; renumbered
keys, some downloads missing) plus ``metadata/*.parquet`` + ``*.npz`` in another row order:
``flyt train`` streaming on the metadata (b32 pair) -> ``flyt score`` with the trained scorer ->
``flyt sample --method scs`` -> ``flyt reshard``. The output shards hold exactly the subset's multiset
minus the missing uids it reports, copies of a uid are in different shards, and the bytes are the same
with 1 and 2 workers and with the Ray engine.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from _datacomp_helpers import make_datacomp_dir, read_members
from flyt.cli.main import main
from flyt.io.subsets import read_subset
from flyt.io.tasks import write_task
from flyt.io.uids import pairs_to_uids
from flyt.io.webdataset import iter_samples

SAMPLES_PER_SHARD = 60


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    dc = make_datacomp_dir(root / "pool", pairs=300, tars=4, metadata_shards=2, absent=20, seed=4)
    rng = np.random.default_rng(2)
    task = write_task(root / "task", ["cat", "dog", "eel"], ["a {c}", "a photo of a {c}"],
                      unit(rng.normal(size=(2, 3, 512))), {"train": (unit(rng.normal(size=(48, 512))), rng.integers(0, 3, 48))})
    run = root / "run"
    train = {"pool": dc.metadata, "pair": "b32", "tasks": f"[{task}]", "out": run, "steps": 8, "upstream_batch": 64,
             "downstream_batch": 24, "warmup_steps": 2, "scorer_lr": 0.01, "reference_lr": 0.03, "scorer.hidden_dim": 32,
             "pool_buffer": 128, "pool_block": 32, "checkpoint_every": 4}
    assert main(["train", "--no-progress", *(a for k, v in train.items() for a in ("--set", f"{k}={v}"))]) == 0
    scores = root / "scores"
    assert main(["score", "--pool", str(dc.metadata), "--pair", "b32", "--out", str(scores), "--scorer",
                 str(run / "scorer.pt"), "--no-progress"]) == 0
    subset = root / "subset.npy"
    assert main(["sample", "--scores", str(scores), "--column", "flyt", "--method", "scs", "--penalty", "0.15",
                 "--total", "600", "--out", str(subset)]) == 0
    outs = {}
    pattern = str(dc.shards / "{00000000..00000003}.tar")
    for name, extra in (("w1", ["--workers", "1"]), ("w2", ["--workers", "2"])):
        outs[name] = root / name
        assert main(["reshard", "--subset", str(subset), "--shards", pattern, "--out", str(outs[name]),
                     "--samples-per-shard", str(SAMPLES_PER_SHARD), "--seed", "1", *extra]) == 0
    return dict(dc=dc, root=root, run=run, scores=scores, subset=subset, outs=outs, pattern=pattern)


def read_out(out):
    """shard name -> [(key, {ext: bytes})] in file order."""
    return {p.name: [(s.pop("__key__"), {e: m.read() for e, m in s.items()}) for s in iter_samples(str(p))]
            for p in sorted(out.glob("*.tar"))}


def tree_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != "_stats.json"}


def originals(dc) -> dict[str, dict[str, bytes]]:
    return read_members(dc.tars)


def test_training_streamed_the_metadata(flow):
    ckpt = torch.load(flow["run"] / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 8 and ckpt["stream"]["buffer"].shape == (128, 2)
    assert [s for s, _ in ckpt["stream"]["shards"]] == ["00000000", "00000001"]


def test_scores_cover_the_metadata(flow):
    tables = [pq.read_table(p) for p in sorted(flow["scores"].glob("*.parquet"))]
    assert len(tables) == 2 and sum(t.num_rows for t in tables) == 300
    assert all(t.column_names == ["uid", "flyt"] for t in tables)


def test_reshard_holds_the_subset_minus_the_missing(flow):
    dc, out = flow["dc"], flow["outs"]["w1"]
    subset = read_subset(flow["subset"])
    wanted = collections.Counter(pairs_to_uids(subset).tolist())
    assert sum(wanted.values()) == 600 and max(wanted.values()) > 1  # SCS repeats the best examples
    present = set(dc.in_tars.tolist())
    missing = {u for u in wanted if u not in present}
    assert missing and missing <= set(dc.absent.tolist())  # the generated pool lost some downloads

    shards, source = read_out(out), originals(dc)
    got = collections.Counter()
    for samples in shards.values():
        for key, members in samples:
            uid = key.split("_")[0]
            assert json.loads(members["json"])["uid"] == uid and members == source[uid]  # byte for byte
            got[uid] += 1
    assert got == collections.Counter({u: c for u, c in wanted.items() if u in present})
    stats = json.loads((out / "_stats.json").read_text())
    assert set(stats["missing"]["list"]) == missing and stats["missing"]["uids"] == len(missing)
    assert stats["samples"] == sum(got.values()) and stats["shards"] == len(shards) == -(-stats["samples"] // SAMPLES_PER_SHARD)

    where = collections.defaultdict(collections.Counter)
    for name, samples in shards.items():
        for key, _ in samples:
            where[key.split("_")[0]][name] += 1
    for uid, c in got.items():
        if c <= len(shards):
            assert max(where[uid].values()) == 1, uid  # no two copies of a uid in one shard


def test_same_output_for_workers_and_ray(flow, tmp_path):
    expected = tree_bytes(flow["outs"]["w1"])
    assert tree_bytes(flow["outs"]["w2"]) == expected
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["reshard", "--subset", str(flow["subset"]), "--shards", flow["pattern"], "--out", str(tmp_path / "ray"),
                     "--samples-per-shard", str(SAMPLES_PER_SHARD), "--seed", "1", "--engine", "ray", "--workers", "2"]) == 0
    finally:
        ray.shutdown()
    assert tree_bytes(tmp_path / "ray") == expected
