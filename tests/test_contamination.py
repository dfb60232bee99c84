"""Decontamination: ``contamination`` equals a brute-force numpy max over the tasks' test images, and
``flyt sample --exclude`` equals sampling a pool with those rows removed first."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flyt.api.sample import sample
from flyt.cli.main import main
from flyt.errors import FlytError
from flyt.io.arrays import fixed_size_list
from flyt.io.atomic import write_parquet
from flyt.io.uids import random_uids
from flyt.pipeline.score import score_pool
from flyt.sampling.exclude import parse_rule

D = 16


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _task(root, test_images, rng):
    root.mkdir(parents=True)
    for split, img in (("train", _unit(rng.standard_normal((5, D)))), ("test", test_images)):
        write_parquet(pa.table({"image_embedding": fixed_size_list(img), "label": pa.array(np.zeros(len(img), np.int64))}),
                      root / f"{split}.parquet")
    return root


@pytest.fixture(scope="module")
def contaminated(tmp_path_factory):
    """A 3-shard pool where 12 rows are (near) copies of test images of two tasks."""
    root = tmp_path_factory.mktemp("contam")
    rng = np.random.default_rng(0)
    tests = [_unit(rng.standard_normal((40, D))), _unit(rng.standard_normal((25, D)))]
    tasks = [_task(root / f"task{k}", t, rng) for k, t in enumerate(tests)]
    pool = _unit(rng.standard_normal((600, D)))
    planted = rng.choice(600, 12, replace=False)
    owner = np.arange(12) % 2
    for r, k in zip(planted, owner):
        pool[r] = _unit(tests[k][rng.integers(len(tests[k]))][None] + 0.01 * rng.standard_normal((1, D)))[0]
    uids = random_uids(600, rng)
    for s, idx in enumerate(np.array_split(np.arange(600), 3)):
        write_parquet(pa.table({"uid": pa.array(uids[idx]), "image_embedding": fixed_size_list(pool[idx]),
                                "text_embedding": fixed_size_list(pool[idx])}), root / "pool" / f"s{s}.parquet")
    summary = score_pool(root / "pool", root / "scores", ["contamination"], tasks=tasks, progress=False)
    assert summary.scored == 3 and not summary.failures
    table = pa.concat_tables([pq.read_table(p) for p in sorted((root / "scores").glob("*.parquet"))])
    return root, pool, uids, tests, planted, owner, table


def test_contamination_equals_brute_force(contaminated):
    _, pool, uids, tests, planted, owner, table = contaminated
    assert table.column("uid").to_pylist() == list(uids)
    sims = [pool.astype(np.float64) @ t.astype(np.float64).T for t in tests]
    best = np.max([s.max(axis=1) for s in sims], axis=0)
    which = np.argmax([s.max(axis=1) for s in sims], axis=0)
    got = table.column("contamination_max").to_numpy()
    task = table.column("contamination_task").to_numpy()
    assert np.abs(got - best).max() < 1e-6
    clear = np.abs(sims[0].max(axis=1) - sims[1].max(axis=1)) > 1e-5  # the task is unambiguous
    assert np.array_equal(task[clear], which[clear])
    assert (got[planted] > 0.99).all() and np.array_equal(task[planted], owner)
    assert (np.delete(got, planted) < 0.99).all()
    assert str(table.schema.field("contamination_task").type) == "int32"


def test_missing_test_split_is_one_line(tmp_path, capsys):
    rng = np.random.default_rng(1)
    task = _task(tmp_path / "task", _unit(rng.standard_normal((3, D))), rng)
    (task / "test.parquet").unlink()
    pool = tmp_path / "pool"
    write_parquet(pa.table({"uid": pa.array(random_uids(4, rng)), "image_embedding": fixed_size_list(_unit(rng.standard_normal((4, D)))),
                            "text_embedding": fixed_size_list(_unit(rng.standard_normal((4, D))))}), pool / "a.parquet")
    code = main(["score", "--no-progress", "--pool", str(pool), "--out", str(tmp_path / "o"), "--scorer", "contamination",
                 "--tasks", str(task)])
    err = capsys.readouterr().err
    assert code == 2 and "test.parquet: missing file (contamination compares" in err and len(err.strip().splitlines()) == 1
    code = main(["score", "--no-progress", "--pool", str(pool), "--out", str(tmp_path / "o"), "--scorer", "contamination"])
    assert code == 2 and "needs downstream tasks" in capsys.readouterr().err


# ----------------------------------------------------------------------------- exclusion in flyt sample
def _scores(root, uids, columns, shards, seed):
    """Score shards of the rows in a random order (another sharding per call)."""
    order = np.random.default_rng(seed).permutation(len(uids))
    for s, idx in enumerate(np.array_split(order, shards)):
        write_parquet(pa.table({"uid": pa.array(uids[idx]), **{c: pa.array(v[idx]) for c, v in columns.items()}}),
                      Path(root) / f"part{s}.parquet")
    return Path(root)


@pytest.mark.parametrize("method", [
    dict(method="topk", fraction=0.3),
    dict(method="scs", penalty=0.2, total=3000),
    dict(method="threshold", threshold=0.5),
])
def test_exclusion_equals_filtering_the_pool_first(tmp_path, method):
    rng = np.random.default_rng(2)
    n = 2000
    uids = random_uids(n, rng)
    score = rng.standard_normal(n).astype(np.float32)
    contam = rng.uniform(0, 1, n).astype(np.float32)
    contam[:5] = np.float32(0.9)  # exactly at the cut: '>=' drops them in float32 (not in float64: 0.9f < 0.9)
    keep = rng.uniform(size=n) < 0.8  # a dedup_keep-style flag, in another directory sharded otherwise
    _scores(tmp_path / "scores", uids, {"s": score, "contamination_max": contam}, 3, 0)
    _scores(tmp_path / "dedup", uids, {"dedup_keep": keep}, 5, 1)
    dropped = (contam >= np.float32(0.9)) | ~keep
    _scores(tmp_path / "filtered", uids[~dropped], {"s": score[~dropped]}, 2, 3)
    ruled = sample(scores=tmp_path / "scores", column="s", seed=4, workers=2, out=tmp_path / "a.npy",
                   exclude=["contamination_max>=0.9", "dedup_keep==0"], exclude_scores=[tmp_path / "dedup"], **method)
    plain = sample(scores=tmp_path / "filtered", column="s", seed=4, out=tmp_path / "b.npy", **method)
    assert np.array_equal(ruled.pairs, plain.pairs) and np.array_equal(ruled.counts, plain.counts) and ruled.total > 0
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    summary = json.loads((tmp_path / "a.json").read_text())
    assert summary["exclude"] == {"rules": ["contamination_max>=0.9", "dedup_keep==0"], "scores": [str((tmp_path / "dedup").absolute())],
                                  "rows_before": n, "rows_excluded": int(dropped.sum())}
    other = json.loads((tmp_path / "b.json").read_text())
    assert summary["pool_rows"] == other["pool_rows"] == n - dropped.sum()
    assert summary["input_checksum"] == other["input_checksum"]


def test_exclusion_cli_and_bad_rules(tmp_path, capsys):
    rng = np.random.default_rng(5)
    uids = random_uids(50, rng)
    _scores(tmp_path / "scores", uids, {"s": rng.standard_normal(50), "c": np.linspace(0, 1, 50)}, 2, 0)
    args = ["sample", "--scores", str(tmp_path / "scores"), "--column", "s", "--method", "topk", "--fraction", "0.5",
            "--out", str(tmp_path / "x.npy")]
    assert main([*args, "--exclude", "c>=0.5"]) == 0
    summary = json.loads((tmp_path / "x.json").read_text())
    assert summary["exclude"]["rows_excluded"] == 25 and summary["pool_rows"] == 25
    for rule, message in [("c~1", "expected COLUMN OP VALUE"), ("c>abc", "'abc' is not a number"),
                          ("zz<1", "column 'zz' is in neither"), ("uid==1", "uid is the key column")]:
        capsys.readouterr()
        assert main([*args, "--exclude", rule]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(FlytError, match="--exclude-scores needs --exclude"):
        sample(scores=tmp_path / "scores", column="s", method="topk", fraction=0.5, exclude_scores=[tmp_path])
    assert parse_rule(" dedup_keep == 0 ").text == "dedup_keep==0"
