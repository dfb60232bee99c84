"""The ``dedup`` scorer: planted exact / near / hash duplicates found (precision and recall), exact
copies always grouped, layout- and engine-invariant bytes, oversized clusters split, bad input."""

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flyt.cli.main import main
from flyt.errors import FlytError
from flyt.io.arrays import fixed_size_list
from flyt.io.atomic import write_parquet
from flyt.io.uids import random_uids, uids_to_pairs
from flyt.pipeline.score import score_pool
from flyt.scorers import ScorerOptions
from flyt.scorers.dedup import UnionFind, leaf_similarities, solve_cluster, split_leaves

pytest.importorskip("sklearn")
D = 32
COLS = ["dedup_group", "dedup_group_size", "dedup_keep", "dedup_nearest"]


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(seed=0, exact=60, near=80, hashed=20, singles=1200, noise=0.15, topics=0, spread=0.8):
    """Embeddings, true group labels, kinds and sha256-like hashes: ``exact`` groups of 2-4 identical
    rows, ``near`` groups of 2-5 rows around a seed (pairwise cosine ~ 1/(1+noise^2) ~ 0.98),
    ``hashed`` pairs with one image hash but unrelated embeddings, and singletons. With ``topics``,
    every seed lies around one of that many random centres (cosine ~ 1/sqrt(1+spread^2) to it)."""
    rng = np.random.default_rng(seed)
    emb, label, kind, hashes = [], [], [], []
    g = 0
    centres = _unit(rng.standard_normal((max(topics, 1), D)))

    def seeds(n):
        if not topics:
            return _unit(rng.standard_normal((n, D)))
        return _unit(centres[rng.integers(0, topics, n)] + spread / np.sqrt(D) * rng.standard_normal((n, D)))

    def add(rows, k, h=None):
        nonlocal g
        emb.append(rows)
        label.extend([g] * len(rows))
        kind.extend([k] * len(rows))
        hashes.extend([h or f"h{g}-{i}" for i in range(len(rows))])
        g += 1

    for _ in range(exact):
        add(np.repeat(seeds(1), rng.integers(2, 5), axis=0), "exact")
    for _ in range(near):
        add(_unit(seeds(1) + noise / np.sqrt(D) * rng.standard_normal((rng.integers(2, 6), D))), "near")
    for _ in range(hashed):
        add(seeds(2), "hash", h=f"same-{g}")
    for _ in range(singles):
        add(seeds(1), "single")
    perm = rng.permutation(len(label))
    return (np.concatenate(emb).astype(np.float32)[perm], np.array(label)[perm], np.array(kind)[perm],
            np.array(hashes)[perm], random_uids(len(label), rng))


def write_pool(root, emb, uids, hashes=None, shards=3, seed=0, names="shard{:03d}"):
    """``shards`` flyt pool shards of the rows in a random order (text embedding = image embedding)."""
    root = Path(root)
    order = np.random.default_rng(seed).permutation(len(uids))
    for s, idx in enumerate(np.array_split(order, shards)):
        data = {"uid": pa.array(uids[idx]), "image_embedding": fixed_size_list(emb[idx]),
                "text_embedding": fixed_size_list(emb[idx])}
        if hashes is not None:
            data["sha256"] = pa.array(hashes[idx])
        write_parquet(pa.table(data), root / f"{names.format(s)}.parquet")
    return root


def options(**kw):
    return ScorerOptions(**{"dedup_clusters": 8, "dedup_threshold": 0.9, "dedup_sample": 4000, **kw})


def run(pool, out, workers=1, engine="local", **kw):
    summary = score_pool(pool, out, ["dedup"], options(**kw), workers=workers, engine=engine, progress=False)
    assert not summary.failures, summary.failures
    return summary


def by_uid(out) -> dict:
    """{column: values in uid order} of a score directory."""
    t = pa.concat_tables([pq.read_table(p) for p in sorted(Path(out).glob("*.parquet"))])
    order = np.argsort(t.column("uid").to_numpy(zero_copy_only=False))
    return {c: t.column(c).to_numpy(zero_copy_only=False)[order] for c in ["uid", *COLS]}


def pair_scores(pred, true):
    """(precision, recall) over the pairs of rows put in one group."""
    def pairs(labels):
        return sum(v * (v - 1) // 2 for v in Counter(labels).values())
    tp = pairs(list(zip(pred, true)))
    return tp / max(pairs(pred), 1), tp / max(pairs(true), 1)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup")
    emb, label, kind, hashes, uids = planted()
    write_pool(root / "pool", emb, uids, hashes)
    summary = run(root / "pool", root / "out")
    order = np.argsort(uids)
    return root, summary, by_uid(root / "out"), emb[order], label[order], kind[order], uids[order]


def test_planted_groups_found(planted_run):
    root, summary, got, emb, label, kind, uids = planted_run
    assert [s.name for s in summary.stages] == ["fit (sample + k-means)", "hashes", "assign+spill", "solve"]
    assert np.array_equal(got["uid"], uids)
    precision, recall = pair_scores(got["dedup_group"], label)
    print(f"planted pool: {len(uids)} rows, pair precision {precision:.4f}, recall {recall:.4f}")
    assert precision >= 0.99 and recall >= 0.95
    for k in ("exact", "hash"):  # exact copies (same embedding, same image hash) always share a group
        mine = kind == k
        assert pair_scores(got["dedup_group"][mine], label[mine])[1] == 1.0
        assert (got["dedup_nearest"][mine] == 1.0).all()
    # One representative per group; the id is the high 63 bits of the group's smallest uid.
    assert Counter(got["dedup_group"][got["dedup_keep"]]) == Counter(set(got["dedup_group"]))
    high = uids_to_pairs(uids)["f0"] >> np.uint64(1)
    for g in np.unique(got["dedup_group"])[:200]:
        members = np.flatnonzero(got["dedup_group"] == g)
        assert g == int(high[members].min()) and (got["dedup_group_size"][members] == len(members)).all()
        if len(members) > 1:  # the nearest other member is a group member: cosine >= threshold
            assert (got["dedup_nearest"][members] >= 0.9 - 1e-6).all() or kind[members[0]] == "hash"
    # Nearest-neighbour cosines of singletons agree with float64 arithmetic on the float16 rows.
    single = np.flatnonzero(got["dedup_group_size"] == 1)
    assert (got["dedup_nearest"][single] < 0.9).all()
    schema = pq.read_schema(next((root / "out").glob("*.parquet")))
    assert [str(schema.field(c).type) for c in COLS] == ["int64", "int64", "bool", "float"]


def test_layout_and_engine_invariance(planted_run, tmp_path):
    """One shard vs four differently named shards in another order, and 2 worker processes: the same
    values for every uid; the same pool on 1 and 2 local workers: the same bytes."""
    root = planted_run[0]
    t = by_uid(root / "out")
    tables = [pq.read_table(p) for p in sorted((root / "pool").glob("*.parquet"))]
    whole = pa.concat_tables(tables)
    uids = whole.column("uid").to_numpy(zero_copy_only=False)
    vecs = np.stack(whole.column("image_embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    hashes = whole.column("sha256").to_numpy(zero_copy_only=False)
    write_pool(tmp_path / "pool4", vecs, uids, hashes, shards=4, seed=7, names="part-{}")
    run(tmp_path / "pool4", tmp_path / "out4", workers=2)
    other = by_uid(tmp_path / "out4")
    for c in ["uid", *COLS]:
        assert np.array_equal(other[c], t[c]), c
    run(root / "pool", tmp_path / "two", workers=2)
    for p in sorted((root / "out").glob("*.parquet")):
        assert (tmp_path / "two" / p.name).read_bytes() == p.read_bytes()


def test_ray_byte_identical_to_local(tmp_path):
    ray = pytest.importorskip("ray")
    emb, _, _, hashes, uids = planted(seed=3, exact=20, near=20, hashed=5, singles=300)
    pool = write_pool(tmp_path / "pool", emb, uids, hashes)
    run(pool, tmp_path / "local", workers=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:  # one Ray for the run's three passes (map_shards leaves a Ray it did not start running)
        run(pool, tmp_path / "ray", workers=2, engine="ray")
    finally:
        ray.shutdown()
    local = sorted((tmp_path / "local").glob("*.parquet"))
    assert len(local) == 3
    for p in local:
        assert (tmp_path / "ray" / p.name).read_bytes() == p.read_bytes()


def test_oversized_cluster_split_equals_unbounded(tmp_path):
    """One k-means cluster of ~1000 rows (6 topics) against --dedup-max-cluster 100: split recursively
    into overlapping leaves that keep every linked pair together (``split_leaves``), so groups, sizes
    and kept rows equal the unsplit run's; nearest-neighbour cosines of grouped rows are equal, of
    singletons can only drop (fewer rows in a leaf). A blob of 150 near-identical rows is not cut up."""
    emb, label, kind, hashes, uids = planted(seed=5, exact=30, near=40, hashed=10, singles=500, topics=6, noise=0.08)
    rng = np.random.default_rng(1)
    blob = _unit(_unit(rng.standard_normal((1, D))) + 0.01 / np.sqrt(D) * rng.standard_normal((150, D))).astype(np.float32)
    emb, uids = np.concatenate([emb, blob]), np.concatenate([uids, random_uids(150, rng)])
    hashes = np.concatenate([hashes, [f"blob{i}" for i in range(150)]])
    pool = write_pool(tmp_path / "pool", emb, uids, hashes)
    run(pool, tmp_path / "whole", dedup_clusters=1, dedup_threshold=0.97)
    run(pool, tmp_path / "split", dedup_clusters=1, dedup_threshold=0.97, dedup_max_cluster=100)
    a, b = by_uid(tmp_path / "whole"), by_uid(tmp_path / "split")
    for c in ["uid", "dedup_group", "dedup_group_size", "dedup_keep"]:
        assert np.array_equal(a[c], b[c]), c
    grouped = a["dedup_group_size"] > 1
    assert np.array_equal(a["dedup_nearest"][grouped], b["dedup_nearest"][grouped])
    assert (b["dedup_nearest"][~grouped] <= a["dedup_nearest"][~grouped]).all()
    # --dedup-split fast partitions: its groups refine the exact ones (a pair across a boundary is lost),
    # exact copies (same embedding, same image hash) still always share a group.
    run(pool, tmp_path / "fast", dedup_clusters=1, dedup_threshold=0.97, dedup_max_cluster=100, dedup_split="fast")
    f = by_uid(tmp_path / "fast")
    for g in np.unique(f["dedup_group"]):
        assert len(np.unique(a["dedup_group"][f["dedup_group"] == g])) == 1
    o = np.argsort(uids)
    kinds = np.concatenate([kind, np.full(150, "blob")])[o]
    labels = np.concatenate([label, np.full(150, -1)])[o]
    for k in ("exact", "hash"):
        mine = kinds == k
        assert pair_scores(f["dedup_group"][mine], labels[mine])[1] == 1.0
    print(f"fast split: {len(np.unique(f['dedup_group']))} groups against {len(np.unique(a['dedup_group']))} exact")
    order = np.argsort(uids)  # the split really happens: overlapping leaves of about 100 rows
    leaves = split_leaves(emb[order].astype(np.float16), uids_to_pairs(uids[order]), np.arange(len(uids)), 100, 0.97, 0)
    assert len(leaves) > 5 and max(len(v) for v in leaves) < len(uids) / 4
    assert a["dedup_group_size"].max() == 150  # the blob: one group


def test_union_find_and_blocked_similarities_match_brute_force():
    rng = np.random.default_rng(0)
    n = 300
    a, b = rng.integers(0, n, 250), rng.integers(0, n, 250)
    uf = UnionFind(n)
    uf.union(a, b)
    ref = list(range(n))

    def find(x):
        while ref[x] != x:
            x = ref[x]
        return x
    for x, y in zip(a, b):
        rx, ry = find(x), find(y)
        ref[max(rx, ry)] = min(rx, ry)
    assert np.array_equal(uf.roots(), [find(x) for x in range(n)])
    x = _unit(rng.standard_normal((120, 8))).astype(np.float32)
    x[60:70] = x[0] + 0.01
    x = _unit(x).astype(np.float32)
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    best, i, j = leaf_similarities(x, 0.8, pair_block=500)  # blocks of 4 rows
    assert np.allclose(best, sims.max(axis=1), atol=1e-6)
    iu, ju = np.nonzero(np.triu(sims >= 0.8, 1))
    assert set(zip(i.tolist(), j.tolist())) == set(zip(iu.tolist(), ju.tolist())) and len(iu) > 40


def test_exact_copies_survive_any_split():
    """threshold 1 and clusters split down to 3 rows: exactly the identical-embedding and same-hash rows
    are grouped, and every class stays in one leaf."""
    rng = np.random.default_rng(2)
    x = _unit(rng.standard_normal((40, 6)))
    x[10:14] = x[3]
    emb = x.astype(np.float16)
    pairs = np.sort(uids_to_pairs(random_uids(40, rng)), order=["f0", "f1"])
    from flyt.scorers.dedup import row_digests
    exact = row_digests(emb.astype(np.float32))
    hashes = np.zeros(40, np.uint64)
    hashes[[20, 35]] = 77  # same image, unrelated embeddings
    cols = solve_cluster(emb, pairs, exact, hashes, np.ones(6) / np.sqrt(6), 1.0, 3, seed=0)
    g = cols["dedup_group"]
    assert len(set(g[[3, 10, 11, 12, 13]])) == 1 and g[20] == g[35]
    assert len(set(g)) == 40 - 4 - 1
    assert cols["dedup_keep"].sum() == len(set(g)) and (cols["dedup_nearest"][[3, 10, 20, 35]] == 1.0).all()


def test_rerun_skips_and_option_change_rescores(planted_run, tmp_path):
    root, *_ = planted_run
    out = tmp_path / "o"
    run(root / "pool", out)
    assert run(root / "pool", out).skipped == 3
    again = run(root / "pool", out, dedup_threshold=0.95)
    assert again.scored == 3 and not any(p.name.startswith(".flyt-score-work") for p in out.iterdir())
    before = by_uid(out)
    score_pool(root / "pool", out, ["clip_score"], progress=False)  # another scorer keeps dedup's columns and dtypes
    after = by_uid(out)
    for c in COLS:
        assert after[c].dtype == before[c].dtype and np.array_equal(after[c], before[c]), c


@pytest.mark.parametrize("args, message", [
    (["--dedup-clusters", "5000"], "option --dedup-clusters must be between 1 and the 60 rows k-means is fitted on"),
    (["--dedup-threshold", "1.5"], "option --dedup-threshold must be in (-1, 1]"),
    (["--dedup-hash", "md5", "--dedup-clusters", "2"], "missing column 'md5'"),
    (["--dedup-spill", "nowhere/x", "--dedup-clusters", "2"], "option --dedup-spill: nowhere/x is not a directory"),
    (["--twice"], "uids must be unique across the pool"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    rng = np.random.default_rng(0)
    emb, uids = _unit(rng.standard_normal((60, D))).astype(np.float32), random_uids(60, rng)
    if "--twice" in args:
        uids[40] = uids[0]
        args = ["--dedup-clusters", "2"]
    write_pool(tmp_path / "pool", emb, uids, shards=3)
    code = main(["score", "--no-progress", "--pool", str(tmp_path / "pool"), "--out", str(tmp_path / "out"),
                 "--scorer", "dedup", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))


def test_options_validated_before_work():
    from flyt.scorers.dedup import Dedup

    with pytest.raises(FlytError, match="--dedup-embedding: unknown 'text'"):
        Dedup(embedding="text")
    with pytest.raises(FlytError, match="--dedup-max-cluster must be >= 2"):
        Dedup(max_cluster=1)
