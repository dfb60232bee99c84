"""Every scorer's output is byte-identical however the pool is laid out and run (issue 16, item 5).

The same 2,000 rows are scored as 1 shard, as 5 shards (rows shuffled, small row groups) and as those
5 shards under reversed file names, with ``--batch-rows`` 7 and 8192, 1 and 2 workers, local and Ray;
the score shards, joined by uid, must agree to the last bit in every column. Directly, each scorer
gives the same bytes for a row whether it is scored alone, in a batch of 7 or of 1000.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tests._score_helpers import CAPTIONS, make_task, unit

from flyt.io.arrays import fixed_size_list
from flyt.io.pool import Batch, pool_shards
from flyt.io.uids import random_uids
from flyt.pipeline.pool_context import PoolContext
from flyt.pipeline.score import score_pool
from flyt.scorers import ScorerOptions, make_scorers

ROWS, DIM = 2000, 16
BUILTIN = ["clip_score", "negclip_loss", "normsim_2", "normsim_inf", "classifier", "image_based", "caption"]
OPTIONS = ScorerOptions(negclip_batches=3, negclip_batch_size=65, clusters=8, kmeans_sample=400, classifier_negatives=300)


def _rows(seed: int = 11) -> pa.Table:
    rng = np.random.default_rng(seed)
    img = unit(rng, ROWS, DIM)
    txt = img * rng.uniform(0, 1, (ROWS, 1)) + unit(rng, ROWS, DIM) * 0.5
    return pa.table({
        "uid": pa.array(random_uids(ROWS, rng)),
        "image_embedding": fixed_size_list(img.astype(np.float32)),
        "text_embedding": fixed_size_list(txt.astype(np.float32)),
        "text": pa.array([CAPTIONS[i % len(CAPTIONS)] + " x" * (i % 5) for i in range(ROWS)]),
        "a": pa.array(rng.standard_normal(ROWS)),
        "b": pa.array(rng.uniform(-3, 3, ROWS)),
    })


def _trained(root: Path) -> list[str]:
    """A FLYT scorer.pt (two SwiGLU blocks) and an M-FLYT scorer.pt over the pool's columns a, b."""
    from flyt.models.checkpoint import save_scorer
    from flyt.models.mixing import ScoreMixer
    from flyt.models.scoring_head import SwiGLUScorer

    torch.manual_seed(0)
    head = SwiGLUScorer(DIM, DIM, hidden_dim=24, depth=2)
    with torch.no_grad():  # residual blocks start at zero; make them count
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_scorer(root / "flyt.pt", "flyt", "flyt_score", head)
    mixer = ScoreMixer(["a", "b"], [0.1, -0.2], [1.0, 1.7])
    with torch.no_grad():
        mixer.linear.weight.copy_(torch.tensor([[0.7, -1.3]]))
    save_scorer(root / "mflyt.pt", "mflyt", "mflyt_score", mixer)
    return [str(root / "flyt.pt"), str(root / "mflyt.pt")]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """(root, {layout: pool dir}, tasks, scorers): one table written as 1 shard, 5 shards, 5 reversed."""
    root = tmp_path_factory.mktemp("invariance")
    table = _rows()
    pools = {name: root / name for name in ("one", "five", "reversed")}
    for p in pools.values():
        p.mkdir()
    pq.write_table(table, pools["one"] / "all.parquet")
    perm = np.random.default_rng(3).permutation(ROWS)
    cuts = np.split(perm, [170, 700, 1100, 1901])  # uneven shards, one of 99 rows
    for i, rows in enumerate(cuts):
        part = table.take(pa.array(rows))
        pq.write_table(part, pools["five"] / f"part{i}.parquet", row_group_size=97)
        pq.write_table(part, pools["reversed"] / f"part{len(cuts) - 1 - i}.parquet", row_group_size=97)
    # task images near two axes, so only some k-means clusters are "downstream-like"
    tasks = [make_task(root / "task1", n=40, dim=DIM, seed=5, centre=np.eye(DIM)[0]),
             make_task(root / "task2", n=9, dim=DIM, seed=6, centre=np.eye(DIM)[1])]
    return root, pools, tasks, BUILTIN + _trained(root)


def _score(layouts, name, layout="one", **kw) -> dict[str, dict[str, bytes]]:
    root, pools, tasks, scorers = layouts
    out = root / "out" / name
    summary = score_pool(pools[layout], out, scorers, OPTIONS, tasks=tasks, seed=4, progress=False, **kw)
    assert summary.rows == ROWS and not summary.failures, summary.failures
    cols: dict[str, dict[str, bytes]] = {}
    for path in sorted(out.glob("*.parquet")):
        t = pq.read_table(path)
        uids = t.column("uid").to_pylist()
        for c in t.column_names[1:]:
            values = t.column(c).to_numpy().astype(np.float32)
            cols.setdefault(c, {}).update(zip(uids, (v.tobytes() for v in values)))
    return cols


def _assert_identical(got, want) -> None:
    assert sorted(got) == sorted(want)
    for c in want:
        assert got[c].keys() == want[c].keys(), c
    differ = {c: sum(got[c][u] != want[c][u] for u in want[c]) for c in want}
    assert not any(differ.values()), f"rows that differ, per column: { {c: n for c, n in differ.items() if n} }"


@pytest.fixture(scope="module")
def baseline(layouts):
    return _score(layouts, "base")


@pytest.mark.parametrize(
    "case",
    [
        dict(layout="five"),
        dict(layout="reversed"),
        dict(layout="one", batch_rows=7),
        dict(layout="reversed", batch_rows=7),
        dict(layout="five", workers=2),
        dict(layout="five", torch_threads=3),
    ],
    ids=["5-shards", "reversed-names", "batch-rows-7", "reversed-batch-rows-7", "2-workers", "3-torch-threads"],
)
def test_layout_batching_and_workers_do_not_change_a_bit(layouts, baseline, case):
    name = "-".join(f"{k}{v}" for k, v in case.items())
    threads = case.pop("torch_threads", None)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # blocks then run on a pool of 3 threads
    try:
        got = _score(layouts, name, **case)
    finally:
        torch.set_num_threads(before)
    _assert_identical(got, baseline)


def test_baseline_columns_vary(baseline):
    """The comparisons above mean something: no column is constant (image_based has both values)."""
    for c, values in baseline.items():
        assert len(set(values.values())) > 1, c


def test_ray_gives_the_same_bytes_as_local(layouts, baseline):
    pytest.importorskip("ray")
    _assert_identical(_score(layouts, "ray", layout="reversed", engine="ray", workers=2), baseline)


def test_pool_sample_is_a_function_of_the_pool_content(layouts):
    """The reference sample is the bottom-n rows by a seeded uid hash: the same uids in the same order
    whatever the shard files are called or hold; another seed or salt draws another sample."""
    _, pools, _, _ = layouts
    samples = {name: PoolContext(pool_shards(p), [], seed=4, image_dim=DIM).pool_sample(300, "x") for name, p in pools.items()}
    one = samples["one"]
    assert len(set(one.uids)) == 300
    for s in samples.values():
        assert list(s.uids) == list(one.uids)
        assert s.image.tobytes() == one.image.tobytes() and s.text.tobytes() == one.text.tobytes()
    ctx = PoolContext(pool_shards(pools["five"]), [], seed=4, image_dim=DIM)
    assert list(ctx.pool_sample(10**6, "x").uids)[:300] == list(one.uids)  # a prefix of the whole order
    assert len(ctx.pool_sample(10**6, "x")) == ROWS
    assert list(ctx.pool_sample(300, "y").uids) != list(one.uids)
    assert list(PoolContext(pool_shards(pools["five"]), [], seed=5, image_dim=DIM).pool_sample(300, "x").uids) != list(one.uids)


def test_fits_are_the_same_bits_on_every_run_and_thread_count():
    """The probe (torch L-BFGS) and k-means (scikit-learn) give the same bits with 1 or 3 threads."""
    pytest.importorskip("sklearn")
    from threadpoolctl import threadpool_limits

    from flyt.scorers.classifier import LinearProbe
    from flyt.scorers.image_based import fit_centroids

    rng = np.random.default_rng(0)
    x = unit(rng, 3000, DIM).astype(np.float32)
    probes, centroids = [], []
    before = torch.get_num_threads()
    try:
        for threads in (1, 3, 3):
            torch.set_num_threads(threads)
            with threadpool_limits(limits=threads):
                probes.append(LinearProbe.fit(x[:300] + 0.2, x[300:]))
                centroids.append(fit_centroids(x, 40, seed=1))
    finally:
        torch.set_num_threads(before)
    for p in probes[1:]:
        assert p.weight.tobytes() == probes[0].weight.tobytes() and p.bias == probes[0].bias
    for c in centroids[1:]:
        assert c.tobytes() == centroids[0].tobytes()


def test_a_row_scores_the_same_alone_or_in_any_batch(layouts):
    """Per-row arithmetic: scoring rows in batches of 1, 7, 1000 or all at once gives the same bytes."""
    _, pools, tasks, specs = layouts
    sources = pool_shards(pools["one"])
    ctx = PoolContext(sources, tasks, seed=4, image_dim=DIM)
    scorers = make_scorers(specs, OPTIONS)
    for s in scorers:
        s.fit(ctx)
    (_, whole), = sources[0].iter_batches(ROWS, captions=True, columns=["a", "b"])

    def part(lo, hi) -> Batch:
        return Batch(uids=whole.uids[lo:hi], image=whole.image[lo:hi].copy(), text=whole.text[lo:hi].copy(),
                     captions=whole.captions[lo:hi], columns={c: v[lo:hi].copy() for c, v in whole.columns.items()})

    def run(size, stop) -> dict[str, np.ndarray]:
        out = {}
        for s in scorers:
            parts = [s.score(part(lo, min(lo + size, stop))) for lo in range(0, stop, size)]
            for c in s.output_columns():
                out[c] = np.concatenate([np.asarray(p[c], dtype=np.float32) for p in parts])
        return out

    full = run(ROWS, ROWS)
    for size, stop in ((1, 40), (7, ROWS), (1000, ROWS)):
        got = run(size, stop)
        for c, v in got.items():
            differ = np.flatnonzero(v.view(np.uint32) != full[c][:stop].view(np.uint32))
            assert differ.size == 0, f"batches of {size}: column {c} differs on {differ.size} rows"
