"""`flyt score` end to end: DataComp clip score, uid joins, resume, pool-wide scorers, trained scorers."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tests._score_helpers import make_datacomp_pool, make_flyt_pool, make_task, unit

from flyt.cli.main import main
from flyt.io.datacomp import write_datacomp_shard
from flyt.io.pool import pool_shards as list_sources
from flyt.pipeline.score import PoolContext, score_pool
from flyt.scorers import ScorerOptions
from flyt.scorers.clip import negclip_loss
from flyt.scorers.normsim import normsim


def read_scores(directory) -> dict:
    """uid -> row dict over all score shards of a directory."""
    out = {}
    for path in sorted(directory.glob("*.parquet")):
        t = pq.read_table(path).to_pylist()
        for row in t:
            out[row["uid"]] = row
    return out


def test_clip_score_equals_datacomp_column_and_joins_by_uid(tmp_path):
    pool = make_datacomp_pool(tmp_path / "pool", shards=2, rows=40, seed=5)
    assert main(["score", "--pool", str(pool), "--out", str(tmp_path / "s"), "--scorer", "clip_score",
                 "--no-progress", "--batch-rows", "7"]) == 0
    for stem in ("00000000", "00000001"):
        meta = pq.read_table(pool / f"{stem}.parquet")
        got = pq.read_table(tmp_path / "s" / f"{stem}.parquet")
        assert got.column("uid").to_pylist() == meta.column("uid").to_pylist()  # same row order
        np.testing.assert_allclose(got.column("clip_score").to_numpy(),
                                   meta.column("clip_l14_similarity_score").to_numpy(), atol=1e-6)
    # Re-shard the same rows in another order (parquet and npz permuted together) into 3 shards.
    tables = [pq.read_table(pool / f"{s}.parquet") for s in ("00000000", "00000001")]
    arrays = [dict(np.load(pool / f"{s}.npz")) for s in ("00000000", "00000001")]
    table = pa.concat_tables(tables)
    arr = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
    perm = np.random.default_rng(0).permutation(table.num_rows)
    for i, rows in enumerate(np.array_split(perm, 3)):
        write_datacomp_shard(tmp_path / "shuffled", f"{i:08d}", table.take(pa.array(rows)),
                             {k: v[rows] for k, v in arr.items()}, compress=(i == 1))
    score_pool(tmp_path / "shuffled", tmp_path / "s2", ["clip_score"], progress=False)
    a, b = read_scores(tmp_path / "s"), read_scores(tmp_path / "s2")
    assert a.keys() == b.keys() and len(a) == 80
    assert all(a[u]["clip_score"] == b[u]["clip_score"] for u in a)


def test_b32_pair_and_caption(tmp_path):
    pool = make_datacomp_pool(tmp_path / "pool", shards=1, rows=12)
    score_pool(pool, tmp_path / "s", ["clip_score", "caption"], pair="b32", progress=False)
    meta = pq.read_table(pool / "00000000.parquet")
    got = pq.read_table(tmp_path / "s" / "00000000.parquet")
    np.testing.assert_allclose(got.column("clip_score").to_numpy(),
                               meta.column("clip_b32_similarity_score").to_numpy(), atol=1e-6)
    assert got.column("caption_words").to_pylist()[:4] == [5, 2, 4, 0]


def test_resume_skips_finished_shards(tmp_path):
    pool = make_flyt_pool(tmp_path / "pool", shards=3, rows=20)
    out = tmp_path / "s"
    first = score_pool(pool, out, ["clip_score"], progress=False)
    assert (first.scored, first.skipped, first.rows) == (3, 0, 60)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    (out / "shard001.parquet").unlink()
    again = score_pool(pool, out, ["clip_score"], progress=False)
    assert (again.scored, again.skipped, again.rows) == (1, 2, 20)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert after["shard000.parquet"] == before["shard000.parquet"]
    # a different scorer into the same directory is not "finished": shards are rewritten
    third = score_pool(pool, out, ["clip_score", "caption"], progress=False)
    assert third.scored == 3
    assert sorted(p.name for p in out.iterdir()) == ["shard000.parquet", "shard001.parquet", "shard002.parquet"]


def test_negclip_and_normsim_through_the_pool(tmp_path):
    pool = make_flyt_pool(tmp_path / "pool", shards=3, rows=30, dim=8, row_group_size=7)
    task = make_task(tmp_path / "task", n=25, dim=8)
    opts = ScorerOptions(negclip_batches=4, negclip_batch_size=9)
    score_pool(pool, tmp_path / "s", ["negclip_loss", "normsim_2", "normsim_inf"], opts, tasks=[task],
               seed=3, batch_rows=11, progress=False)
    # direct recomputation: the same seeded reference sample, whole pool in memory
    sources = list_sources(pool)
    ctx = PoolContext(sources, [task], seed=3, image_dim=8)
    ref = ctx.pool_sample(4 * 8, salt="negclip_loss")
    assert len(set(ref.uids)) == 32
    uids = np.concatenate([s.read_uids() for s in sources])
    batches = [b for s in sources for _, b in s.iter_batches(1000)]
    v = np.concatenate([b.image for b in batches])
    t = np.concatenate([b.text for b in batches])
    want = negclip_loss(v, t, ref.image, ref.text, 4, 0.01, uids, ref.uids)
    got = read_scores(tmp_path / "s")
    assert np.allclose([got[u]["negclip_loss"] for u in uids], want, atol=1e-6)
    targets = ctx.task_images()
    assert np.allclose([got[u]["normsim_inf"] for u in uids], normsim(v, targets, np.inf), atol=1e-6)
    assert np.allclose([got[u]["normsim_2"] for u in uids], normsim(v, targets, 2), atol=1e-6)
    # sampled rows really are pool rows (the row-group take path)
    pos = {u: i for i, u in enumerate(uids)}
    assert np.allclose(ref.image, v[[pos[u] for u in ref.uids]])


def test_classifier_and_image_based_find_downstream_like_rows(tmp_path):
    pytest.importorskip("sklearn")  # the flyt-clip[scorers] extra (in dev)
    rng = np.random.default_rng(7)
    d = 12
    centres = np.eye(d)[:3] * 3.0
    # pool: three tight clusters; the task's images sit on cluster 0
    from flyt.io.arrays import fixed_size_list
    from flyt.io.atomic import write_parquet
    from flyt.io.uids import random_uids

    labels = np.repeat([0, 1, 2], 40)
    img = centres[labels] + 0.2 * unit(rng, 120, d)
    write_parquet(pa.table({"uid": pa.array(random_uids(120, rng)),
                            "image_embedding": fixed_size_list(img.astype(np.float32)),
                            "text_embedding": fixed_size_list(unit(rng, 120, d).astype(np.float32))}),
                  tmp_path / "pool" / "a.parquet")
    task = make_task(tmp_path / "task", n=20, dim=d, centre=centres[0])
    opts = ScorerOptions(clusters=3, kmeans_sample=120, classifier_negatives=60,
                         save_classifier=str(tmp_path / "probe.npz"))
    score_pool(tmp_path / "pool", tmp_path / "s", ["classifier", "image_based"], opts, tasks=[task], progress=False)
    got = pq.read_table(tmp_path / "s" / "a.parquet")
    ib = got.column("image_based").to_numpy()
    assert ib.tolist() == (labels == 0).astype(float).tolist()
    clf = got.column("classifier").to_numpy()
    assert clf[labels == 0].min() > clf[labels != 0].max()
    # the saved probe is reusable and gives the same scores
    score_pool(tmp_path / "pool", tmp_path / "s2", ["classifier"], ScorerOptions(classifier=str(tmp_path / "probe.npz")),
               tasks=[task], progress=False)
    assert pq.read_table(tmp_path / "s2" / "a.parquet").column("classifier").to_pylist() == clf.tolist()


def _trained(tmp_path):
    from flyt.models.checkpoint import save_scorer
    from flyt.models.mixing import ScoreMixer
    from flyt.models.scoring_head import SwiGLUScorer

    torch.manual_seed(0)
    head = SwiGLUScorer(16, 16, hidden_dim=24)
    save_scorer(tmp_path / "flyt.pt", "flyt", "flyt_score", head)
    mixer = ScoreMixer(["a", "b", "c"], [0.1, -0.2, 0.0], [1.0, 2.0, 0.5])
    with torch.no_grad():
        mixer.linear.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
    save_scorer(tmp_path / "mflyt.pt", "mflyt", "mflyt_score", mixer)
    return head, mixer


def test_trained_flyt_and_mflyt_scorers(tmp_path):
    head, mixer = _trained(tmp_path)
    # M-FLYT inputs: 'a' lives in the pool shards; 'b' and 'c' in score directories whose rows are
    # shuffled and re-sharded under other stems, so only a uid join can line them up.
    pool = make_flyt_pool(tmp_path / "pool", shards=2, rows=25, extra_columns=["a"])
    tables = [pq.read_table(p) for p in sorted(pool.glob("*.parquet"))]
    table = pa.concat_tables(tables)
    rng = np.random.default_rng(0)
    extra = {"b": rng.standard_normal(50), "c": rng.standard_normal(50)}
    perm = rng.permutation(50)
    (tmp_path / "sb").mkdir()
    (tmp_path / "sc").mkdir()
    for i, rows in enumerate(np.array_split(perm, 3)):
        pq.write_table(pa.table({"uid": table.column("uid").take(pa.array(rows)), "b": extra["b"][rows]}),
                       tmp_path / "sb" / f"other{i}.parquet")
    pq.write_table(pa.table({"uid": table.column("uid").take(pa.array(perm)), "c": extra["c"][perm]}),
                   tmp_path / "sc" / "shard000.parquet")
    assert main(["score", "--pool", str(pool), "--out", str(tmp_path / "s"), "--no-progress",
                 "--scorer", str(tmp_path / "flyt.pt"), str(tmp_path / "mflyt.pt"),
                 "--scores", str(tmp_path / "sb"), str(tmp_path / "sc")]) == 0
    got = pq.read_table(tmp_path / "s" / "shard000.parquet")
    got = pa.concat_tables([got, pq.read_table(tmp_path / "s" / "shard001.parquet")])
    assert got.column("uid").to_pylist() == table.column("uid").to_pylist()
    from flyt.io.arrays import embedding_matrix

    with torch.no_grad():
        want_flyt = head(torch.tensor(embedding_matrix(table, "image_embedding", "t")),
                         torch.tensor(embedding_matrix(table, "text_embedding", "t"))).numpy()
        s = np.stack([table.column("a").to_numpy(), extra["b"], extra["c"]], axis=1)
        want_mflyt = mixer(torch.as_tensor(s)).numpy()
    np.testing.assert_allclose(got.column("flyt_score").to_numpy(), want_flyt, atol=1e-5)
    np.testing.assert_allclose(got.column("mflyt_score").to_numpy(), want_mflyt, atol=1e-5)


def test_mflyt_missing_input_column_fails_clearly(tmp_path, capsys):
    _trained(tmp_path)
    pool = make_flyt_pool(tmp_path / "pool", shards=1, rows=5, extra_columns=["a", "b"])
    code = main(["score", "--pool", str(pool), "--out", str(tmp_path / "s"), "--no-progress",
                 "--scorer", str(tmp_path / "mflyt.pt")])
    assert code == 2
    assert "score column 'c' is in neither the pool shard nor the --scores directories" in capsys.readouterr().err
    assert not (tmp_path / "s" / "shard000.parquet").exists()


def test_pool_sample_on_datacomp_is_uniform_rows_by_uid(tmp_path):
    pool = make_datacomp_pool(tmp_path / "pool", shards=2, rows=30, seed=2)
    # second shard compressed: the sample reads it by streaming
    arrays = dict(np.load(pool / "00000001.npz"))
    (pool / "00000001.npz").unlink()
    np.savez_compressed(pool / "00000001.npz", **arrays)
    sources = list_sources(pool, "l14")
    ctx = PoolContext(sources, [], seed=0, image_dim=768)
    sample = ctx.pool_sample(25, salt="x")
    again = ctx.pool_sample(25, salt="x")
    other = ctx.pool_sample(25, salt="y")
    assert list(sample.uids) == list(again.uids) and list(sample.uids) != list(other.uids)
    assert len(set(sample.uids)) == 25
    rows = {}
    for stem in ("00000000", "00000001"):
        uids = pq.read_table(pool / f"{stem}.parquet").column("uid").to_pylist()
        img = np.load(pool / f"{stem}.npz")["l14_img"].astype(np.float64)
        for u, v in zip(uids, img):
            rows[u] = v / np.linalg.norm(v)
    np.testing.assert_allclose(sample.image, np.stack([rows[u] for u in sample.uids]), atol=1e-6)
