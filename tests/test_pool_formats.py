"""One pool reader for both layouts: a DataComp metadata directory (parquet + npz, b32 or l14) and the
same rows written as flyt pool shards give the same arrays, the same trained scorer and the same scores."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import flyt
from _score_helpers import make_datacomp_pool
from flyt.io.pool import load_pool, pool_shards, write_pool_shard
from flyt.io.tasks import write_task

TRAIN = {"steps": 12, "upstream_batch": 64, "downstream_batch": 32, "warmup_steps": 2, "scorer_lr": 0.01,
         "reference_lr": 0.03, "scorer": {"hidden_dim": 32}}


def as_flyt_shards(datacomp_dir, out, pair):
    """The DataComp pool's rows, in the same order, as flyt pool shards (raw fp16 values, widened)."""
    dim = {"b32": 512, "l14": 768}[pair]
    for shard in pool_shards(datacomp_dir, pair):
        table = pq.read_table(shard.parquet)
        npz = np.load(shard.npz)
        img, txt = npz[f"{pair}_img"].astype(np.float32), npz[f"{pair}_txt"].astype(np.float32)
        assert img.shape[1] == dim
        write_pool_shard(out / f"{shard.stem}.parquet", table.column("uid").to_numpy(zero_copy_only=False), img, txt,
                         {c: table.column(c) for c in table.column_names if c != "uid"})
    return out


def make_task(root, dim, seed=5):
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    prompts = unit(rng.normal(size=(2, 3, dim))).astype(np.float32)
    images = unit(rng.normal(size=(40, dim))).astype(np.float32)
    return write_task(root, ["cat", "dog", "eel"], ["a {c}", "a photo of a {c}"], prompts,
                      {"train": (images, rng.integers(0, 3, 40))})


@pytest.mark.parametrize("pair", ["b32", "l14"])
def test_datacomp_pool_trains_like_its_flyt_copy(tmp_path, pair):
    datacomp = make_datacomp_pool(tmp_path / "datacomp", shards=3, rows=50, seed=11)
    copy = as_flyt_shards(datacomp, (tmp_path / "flyt").resolve(), pair)
    a, b = load_pool(datacomp, pair=pair, score_columns=["clip_b32_similarity_score"]), load_pool(
        copy, score_columns=["clip_b32_similarity_score"])
    assert np.array_equal(a.uids, b.uids)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.text, b.text)
    assert np.array_equal(a.scores, b.scores)

    task = make_task(tmp_path / "task", a.image.shape[1])
    runs = {}
    for name, pool in (("datacomp", datacomp), ("flyt", copy)):
        runs[name] = flyt.train({"pool": str(pool), "pair": pair, "tasks": [str(task)],
                                 "out": str(tmp_path / f"run-{name}"), **TRAIN})
    sa = torch.load(runs["datacomp"].scorer, weights_only=True)["state_dict"]
    sb = torch.load(runs["flyt"].scorer, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key

    scores = {}
    for name, pool in (("datacomp", datacomp), ("flyt", copy)):
        out = tmp_path / f"scores-{name}"
        flyt.score(pool=pool, out=out, scorers=[str(runs[name].scorer)], pair=pair, progress=False)
        scores[name] = [pq.read_table(p) for p in sorted(out.glob("*.parquet"))]
    for ta, tb in zip(scores["datacomp"], scores["flyt"]):
        assert ta.equals(tb)


def test_mflyt_reads_score_columns_from_datacomp_parquet(tmp_path):
    datacomp = make_datacomp_pool(tmp_path / "datacomp", shards=2, rows=60, seed=2)
    task = make_task(tmp_path / "task", 512)
    run = flyt.train({"pool": str(datacomp), "pair": "b32", "tasks": [str(task)], "out": str(tmp_path / "run"),
                      "mode": "mflyt", "score_columns": ["clip_b32_similarity_score", "clip_l14_similarity_score"],
                      **TRAIN})
    from flyt.models.checkpoint import load_scorer

    assert set(load_scorer(run.scorer).model.weights()) == {"clip_b32_similarity_score", "clip_l14_similarity_score"}
