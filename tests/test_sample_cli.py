"""`flyt sample` end to end: determinism across shards/workers, the DataComp format, bad input."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _sample_helpers import small_pool, write_scores
from flyt.cli.main import main
from flyt.io.uids import uids_to_pairs

N = 3000


@pytest.fixture(scope="module")
def pool():
    return small_pool(N, seed=1)


def _run(tmp_path, scores_dir, *extra, out="subset.npy"):
    out = tmp_path / out
    rc = main(["sample", "--scores", str(scores_dir), "--column", "clip", "--out", str(out), *extra])
    return rc, out


SCS = ["--method", "scs", "--total", "4000", "--penalty", "0.15", "--seed", "3"]


def test_same_output_for_1_or_7_shards_any_file_order_and_workers(tmp_path, pool):
    uids, scores = pool
    one = write_scores(tmp_path / "one", uids, scores, shards=1)
    # Seven shards, file names in a different order than the rows.
    perm = np.random.default_rng(0).permutation(N)
    seven = write_scores(tmp_path / "seven", uids[perm], scores[perm], shards=7,
                         names=[f"z{9 - i}" for i in range(7)])
    outputs = []
    for name, d, workers in [("a", one, "1"), ("b", seven, "1"), ("c", seven, "2")]:
        rc, out = _run(tmp_path, d, *SCS, "--workers", workers, "--counts-parquet", str(tmp_path / f"{name}.parquet"),
                       out=f"{name}.npy")
        assert rc == 0
        outputs.append((out.read_bytes(), out.with_suffix(".json").read_text(), (tmp_path / f"{name}.parquet")))
    for other in outputs[1:]:
        assert other[0] == outputs[0][0]
        assert json.loads(other[1])["input_checksum"] == json.loads(outputs[0][1])["input_checksum"]
        assert pq.read_table(other[2]).equals(pq.read_table(outputs[0][2]))
    # A different seed gives a different draw (the comparison above is not vacuous).
    rc, out = _run(tmp_path, one, *SCS[:-1], "4", out="d.npy")
    assert rc == 0 and out.read_bytes() != outputs[0][0]


def test_subset_loads_as_datacomp_expects(tmp_path, pool):
    uids, scores = pool
    d = write_scores(tmp_path / "s", uids, scores, shards=3)
    rc, out = _run(tmp_path, d, *SCS, "--counts-parquet", str(tmp_path / "c.parquet"))
    assert rc == 0
    arr = np.load(out)
    assert arr.dtype == np.dtype([("f0", "<u8"), ("f1", "<u8")]) and arr.ndim == 1 and len(arr) == 4000
    # Sorted by (high, low) word, as the DataComp resharder's searchsorted needs.
    key_sorted = np.lexsort((arr["f1"], arr["f0"]))
    assert (key_sorted == np.arange(len(arr))).all()
    uniq, reps = np.unique(arr, return_counts=True)
    counts = pq.read_table(tmp_path / "c.parquet").to_pydict()
    assert (uids_to_pairs(np.array(counts["uid"])) == uniq).all() and counts["count"] == reps.tolist()
    assert set(uniq.tolist()) <= set(uids_to_pairs(uids).tolist())
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["method"] == "scs" and summary["total"] == 4000 and summary["seed"] == 3
    assert summary["unique"] == len(uniq) and summary["max_count"] == reps.max()
    assert summary["count_histogram"] == {str(k): int(v) for k, v in zip(*np.unique(reps, return_counts=True))}
    assert summary["pool_rows"] == N and summary["parameters"]["penalty"] == 0.15
    # SCS gives more copies to higher scores: mean score rises with the count.
    score_of = dict(zip(uids_to_pairs(uids).tolist(), scores.tolist()))
    s = np.array([score_of[u] for u in uniq.tolist()])
    assert np.corrcoef(s, reps)[0, 1] > 0.5


def test_topk_and_threshold_keep_once_and_report_repeats(tmp_path, pool):
    uids, scores = pool
    d = write_scores(tmp_path / "s", uids, scores, shards=2)
    rc, out = _run(tmp_path, d, "--method", "topk", "--fraction", "0.3", "--fraction-rule", "exact", "--budget", "9000", out="top.npy")
    assert rc == 0
    arr = np.load(out)
    best = np.argsort(-scores.astype(np.float64), kind="stable")[:900]
    assert len(arr) == 900 and len(np.unique(arr)) == 900
    assert set(arr.tolist()) == set(uids_to_pairs(uids[best]).tolist())
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["repeats_for_budget"] == 10 and summary["epochs_for_budget"] == 10
    x = float(np.quantile(scores, 0.8))
    rc, out = _run(tmp_path, d, "--method", "threshold", "--threshold", str(x), out="thr.npy")
    assert rc == 0
    arr = np.load(out)
    assert set(arr.tolist()) == set(uids_to_pairs(uids[scores >= x]).tolist()) and len(arr) == (scores >= x).sum()
    assert json.loads(out.with_suffix(".json").read_text())["budget"] == N  # default: pool size


def test_batched_option_runs_the_authors_procedure(tmp_path, pool):
    uids, scores = pool
    d = write_scores(tmp_path / "s", uids, scores, shards=3)
    rc, out = _run(tmp_path, d, *SCS, "--batch", "500")
    assert rc == 0
    arr = np.load(out)
    assert len(arr) == 4000 and json.loads(out.with_suffix(".json").read_text())["procedure"] == "batched"


def test_hcs_cap_respected_and_exactly_reachable_total(tmp_path):
    uids, scores = small_pool(50, seed=2)
    d = write_scores(tmp_path / "s", uids, scores, shards=2)
    rc, out = _run(tmp_path, d, "--method", "hcs", "--cap", "3", "--total", "150")
    assert rc == 0
    _, reps = np.unique(np.load(out), return_counts=True)
    assert len(reps) == 50 and (reps == 3).all()


def _bad(tmp_path, capsys, scores_dir, args, expect):
    out = tmp_path / "bad.npy"
    rc = main(["sample", "--scores", str(scores_dir), "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and expect in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not list(tmp_path.glob(".bad*"))  # no temporary left behind


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--column", "nope", "--method", "scs", "--total", "10", "--penalty", "0.1"], "missing column 'nope'"),
        (["--column", "clip", "--method", "scs", "--total", "10", "--penalty", "0"], "--penalty must be positive"),
        (["--column", "clip", "--method", "scs", "--total", "10", "--penalty", "-1"], "--penalty must be positive"),
        (["--column", "clip", "--method", "scs", "--total", "10", "--penalty", "0.1", "--temperature", "0"],
         "--temperature must be positive"),
        (["--column", "clip", "--method", "scs", "--total", "10", "--penalty", "0.1", "--temperature", "-2"],
         "--temperature must be positive"),
        (["--column", "clip", "--method", "hcs", "--total", "61", "--cap", "3"], "--total 61 cannot be reached"),
        (["--column", "clip", "--method", "hcs", "--total", "61", "--cap", "3", "--batch", "5"], "--total 61 cannot be reached"),
        (["--column", "clip", "--method", "scs", "--penalty", "0.1"], "needs --total"),
        (["--column", "clip", "--method", "topk"], "exactly one of --fraction"),
        (["--column", "clip", "--method", "topk", "--fraction", "1.5"], "--fraction must be in (0, 1]"),
        (["--column", "clip", "--method", "threshold", "--threshold", "0", "--penalty", "1"], "--penalty does not apply"),
        (["--column", "clip", "--method", "scs", "--total", "10", "--penalty", "0.1", "--workers", "0"], "--workers"),
    ],
)
def test_bad_options_fail_cleanly(tmp_path, capsys, args, expect):
    uids, scores = small_pool(20, seed=3)
    d = write_scores(tmp_path / "s", uids, scores, shards=2)
    _bad(tmp_path, capsys, d, args, expect)


SCS_SMALL = ["--column", "clip", "--method", "scs", "--total", "10", "--penalty", "0.1"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_score_names_file_and_row(tmp_path, capsys, bad):
    uids, scores = small_pool(20, seed=3)
    scores[13] = bad
    d = write_scores(tmp_path / "s", uids, scores, shards=2)
    _bad(tmp_path, capsys, d, SCS_SMALL, "part-001.parquet: column 'clip' row 3 is not finite")


def test_duplicate_uid_across_shards(tmp_path, capsys):
    uids, scores = small_pool(20, seed=3)
    uids[15] = uids[4]
    d = write_scores(tmp_path / "s", uids, scores, shards=2)
    _bad(tmp_path, capsys, d, SCS_SMALL, f"duplicate uid {uids[4]}")
    _bad(tmp_path, capsys, d, ["--column", "clip", "--method", "threshold", "--threshold", "0"], "duplicate uid")
    _bad(tmp_path, capsys, d, SCS_SMALL + ["--batch", "2"], "duplicate uid")


def test_duplicate_uid_within_a_shard_even_if_never_drawn(tmp_path, capsys):
    uids, scores = small_pool(20, seed=3)
    uids[7], scores[7], scores[2] = uids[2], -50.0, -50.0  # both copies far below the level
    d = write_scores(tmp_path / "s", uids, scores, shards=1)
    _bad(tmp_path, capsys, d, SCS_SMALL, "part-000.parquet row 2 and")


def test_bad_uid_missing_uid_empty_and_unreadable_inputs(tmp_path, capsys):
    uids, scores = small_pool(20, seed=3)
    bad = uids.copy()
    bad[5] = "xyz"
    _bad(tmp_path, capsys, write_scores(tmp_path / "u", bad, scores), SCS_SMALL, "row 5: uid 'xyz' is not 32 hexadecimal")
    d = tmp_path / "nouid"
    d.mkdir()
    pq.write_table(pa.table({"clip": pa.array(scores)}), d / "a.parquet")
    _bad(tmp_path, capsys, d, SCS_SMALL, "missing column 'uid'")
    empty = tmp_path / "empty"
    empty.mkdir()
    _bad(tmp_path, capsys, empty, SCS_SMALL, "no .parquet shards")
    d = tmp_path / "zero"
    d.mkdir()
    pq.write_table(pa.table({"uid": pa.array([], pa.string()), "clip": pa.array([], pa.float32())}), d / "a.parquet")
    _bad(tmp_path, capsys, d, SCS_SMALL, "no rows (empty pool)")
    d = tmp_path / "corrupt"
    d.mkdir()
    (d / "a.parquet").write_bytes(b"not parquet")
    _bad(tmp_path, capsys, d, SCS_SMALL, "unreadable parquet shard")


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = capsys.readouterr().out
    for flag in ["--scores", "--column", "--method", "--total", "--penalty", "--cap", "--fraction", "--count",
                 "--threshold", "--temperature", "--seed", "--batch", "--budget", "--out", "--counts-parquet",
                 "--engine", "--workers"]:
        assert flag in text


def test_parquet_subsample_stride_does_not_change_the_draw(tmp_path, pool, monkeypatch):
    from flyt.sampling import select as select_mod

    uids, scores = pool
    d = write_scores(tmp_path / "s", uids, scores, shards=3)
    rc, first = _run(tmp_path, d, *SCS, out="a.npy")
    monkeypatch.setattr(select_mod, "SUBSAMPLE_ROWS", 64)  # every 46th row places the bracket
    rc2, second = _run(tmp_path, d, *SCS, out="b.npy")
    assert rc == rc2 == 0 and first.read_bytes() == second.read_bytes()
