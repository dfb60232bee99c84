"""Drop-in DataComp baselines: ``flyt sample`` selects what DataComp's ``baselines.py`` selects, and
``--method hcs --batch B`` runs the authors' hard-cap procedure.

The DataComp references below transcribe mlfoundations/datacomp baselines/apply_filter.py:
- top fraction (get_threshold, then load_uids_with_clip_score_helper): the scores of all shards are
  concatenated (float32 stays float32), k = int(N * F) in float64, the cut t is entry k of the scores
  sorted in descending order, and each shard keeps its rows with score >= t (ties at t all kept);
- threshold: each shard keeps its rows with score >= X, the comparison made by numpy in the column's
  dtype (a float32 column is compared with float32(X), X rounded to nearest);
- the kept uids, as (high, low) uint64 pairs, are sorted and saved with np.save.
The HCS test's statistic: per run, the mean count of each score decile, the number of distinct
examples drawn and the largest count; two-sample z-tests over independent runs, Bonferroni at
family-wise level 1e-3 (tests/test_sample_stats.py's style), and each shows it rejects a wrong model.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _sample_helpers import bonferroni_bound, race_counts, sequential_counts, z_scores
from flyt.cli.main import main
from flyt.engines.local import map_shards
from flyt.errors import FlytError
from flyt.io.uids import random_uids, uids_to_pairs
from flyt.sampling import ArrayScores, SampleSpec, sample
from flyt.sampling.batched import batched_counts, hard_cap_counts
from flyt.sampling.draw import _lowest_score, threshold_cut

# --------------------------------------------------------------------------- DataComp's rules


def _shards(directory, uids, scores, shards=3, dtype=pa.float32()):
    directory.mkdir(parents=True, exist_ok=True)
    pieces = np.array_split(np.arange(len(uids)), shards)
    for i, idx in enumerate(pieces):
        pq.write_table(pa.table({"uid": pa.array(uids[idx], pa.string()), "s": pa.array(scores[idx], dtype)}),
                       directory / f"part-{i:03d}.parquet")
    return [scores[idx] for idx in pieces], [uids[idx] for idx in pieces]


def _datacomp_save(path, uid_pieces, keep_pieces):
    """The uids DataComp keeps, sorted and saved as its baselines save them."""
    kept = np.concatenate([u[k] for u, k in zip(uid_pieces, keep_pieces)])
    pairs = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in kept], np.dtype("u8,u8"))
    pairs.sort()
    np.save(path, pairs)
    return len(pairs)


def datacomp_top_fraction(score_pieces, fraction):
    values = np.concatenate(score_pieces)
    cut = -np.sort(-values)[int(len(values) * fraction)]
    return [s >= cut for s in score_pieces]


def datacomp_threshold(score_pieces, x):
    return [s >= x for s in score_pieces]  # numpy: a Python float against a float32 array compares in float32


def _flyt(tmp_path, directory, name, *args):
    out = tmp_path / f"{name}.npy"
    assert main(["sample", "--scores", str(directory), "--column", "s", *args, "--out", str(out)]) == 0
    return out


@pytest.fixture
def tied_pool(tmp_path):
    """1,000 float32 scores on a coarse grid: every value is shared by ~10 rows, ties at every cut."""
    rng = np.random.default_rng(13)
    n = 1000
    uids = random_uids(n, rng)
    scores = (np.round(rng.standard_normal(n) * 20) / 8).astype(np.float32)
    scores[[17, 400, 901]] = scores.max()  # the best score tied too (the cut of a tiny fraction)
    return tmp_path / "pool", uids, scores


@pytest.mark.parametrize("fraction", [0.3, 0.29, 0.5, 0.0004, 1.0])
def test_top_fraction_is_datacomps_rule_byte_for_byte(tmp_path, tied_pool, fraction):
    directory, uids, scores = tied_pool
    pieces, uid_pieces = _shards(directory, uids, scores)
    got = _flyt(tmp_path, directory, "flyt", "--method", "topk", "--fraction", str(fraction))
    if fraction == 1.0:  # DataComp's index k = N is out of range there; flyt keeps every row
        rows = _datacomp_save(tmp_path / "dc.npy", uid_pieces, [np.ones(len(p), bool) for p in pieces])
    else:
        rows = _datacomp_save(tmp_path / "dc.npy", uid_pieces, datacomp_top_fraction(pieces, fraction))
        k = int(len(scores) * fraction)
        # Planted ties: the cut's value is shared, so DataComp keeps more than k + 1 rows.
        assert rows > k + 1 and (scores == np.sort(scores)[::-1][k]).sum() > 1
    assert got.read_bytes() == (tmp_path / "dc.npy").read_bytes()
    summary = json.loads(got.with_suffix(".json").read_text())
    assert summary["total"] == rows and summary["parameters"]["fraction_rule"] == "datacomp"


def test_exact_count_rule_keeps_floor_n_f_rows(tmp_path, tied_pool):
    directory, uids, scores = tied_pool
    _shards(directory, uids, scores)
    for fraction in (0.3, 0.29, 0.0004):
        got = np.load(_flyt(tmp_path, directory, f"exact{fraction}", "--method", "topk", "--fraction", str(fraction),
                            "--fraction-rule", "exact"))
        assert len(got) == max(1, math.floor(len(scores) * fraction)) == len(np.unique(got))
    summary = json.loads((tmp_path / "exact0.3.json").read_text())
    assert summary["parameters"]["fraction_rule"] == "exact"


def test_top_fraction_without_ties_keeps_k_plus_one_rows():
    rng = np.random.default_rng(3)
    scores = rng.permutation(1000).astype(np.float32)
    pairs = uids_to_pairs(random_uids(1000, rng))
    got = sample(SampleSpec("topk", fraction=0.3), [ArrayScores(pairs[i::4], scores[i::4]) for i in range(4)])
    assert len(got.pairs) == 301 and got.level == -float(np.sort(scores)[::-1][300])


def test_lowest_score_fallback_finds_the_cut():
    """When the race cannot report its last firing, the cut is looked up among the kept rows."""
    rng = np.random.default_rng(4)
    scores = rng.standard_normal(5000).astype(np.float32)
    pairs = uids_to_pairs(random_uids(5000, rng))
    sources = [ArrayScores(pairs[i::3], scores[i::3]) for i in range(3)]
    best = sample(SampleSpec("topk", count=700), sources)
    cut = _lowest_score(replace(best, level=math.nan), sources, map_shards, 1)
    assert cut == float(np.sort(scores)[::-1][699])


def _float32_boundary_pool(x32):
    """Scores at float32(X) itself and its float32 neighbours, amid random ones."""
    rng = np.random.default_rng(5)
    up, down = np.nextafter(x32, np.float32(np.inf)), np.nextafter(x32, np.float32(-np.inf))
    planted = np.array([x32] * 5 + [up] * 3 + [down] * 4, np.float32)
    scores = rng.permutation(np.concatenate([planted, rng.uniform(0, 0.6, 488).astype(np.float32)]))
    return random_uids(len(scores), rng), scores


@pytest.mark.parametrize("side", ["x-above-float32", "x-below-float32"])
def test_threshold_compares_in_the_columns_float32_like_datacomp(tmp_path, side):
    x32 = np.float32(0.3)
    # float32(X) == x32 either way; X is above it (rows at x32 kept only by a float32 comparison) or below.
    x = float(np.nextafter(np.float64(x32), np.inf if side == "x-above-float32" else -np.inf))
    assert np.float32(x) == x32 and (x > float(x32)) == (side == "x-above-float32")
    uids, scores = _float32_boundary_pool(x32)
    pieces, uid_pieces = _shards(tmp_path / "pool", uids, scores)
    got = _flyt(tmp_path, tmp_path / "pool", "thr", "--method", "threshold", "--threshold", repr(x))
    rows = _datacomp_save(tmp_path / "dc.npy", uid_pieces, datacomp_threshold(pieces, x))
    assert rows == (scores >= x32).sum()  # the boundary rows at float32(X) are in
    assert got.read_bytes() == (tmp_path / "dc.npy").read_bytes()


def test_threshold_cut_for_each_dtype():
    f32 = ArrayScores(np.zeros(0, np.dtype("u8,u8")), np.zeros(0, np.float32))
    f64 = ArrayScores(np.zeros(0, np.dtype("u8,u8")), np.zeros(0, np.float64))
    x = float(np.nextafter(np.float64(np.float32(0.3)), np.inf))
    assert threshold_cut(x, [f32]) == float(np.float32(0.3)) and threshold_cut(x, [f64]) == x
    assert threshold_cut(0.5, [f32, f64]) == 0.5  # a float32 value: one cut serves both dtypes
    assert threshold_cut(1e300, [f32]) == math.inf and threshold_cut(-1e300, [f32]) == -math.inf
    with pytest.raises(FlytError, match="several dtypes"):
        threshold_cut(x, [f32, f64])  # float32 keeps float32(0.3) < X, float64 does not: no single cut


def test_fraction_rule_is_checked():
    with pytest.raises(FlytError, match="--fraction-rule must be one of"):
        SampleSpec("topk", fraction=0.5, fraction_rule="floor").validate()
    with pytest.raises(FlytError, match="--fraction-rule applies to --method topk"):
        SampleSpec("threshold", threshold=0.5, fraction_rule="exact").validate()
    with pytest.raises(FlytError, match="--fraction-rule applies to --fraction"):
        SampleSpec("topk", count=5, fraction_rule="exact").validate()


# --------------------------------------------------------------------------- the authors' batched HCS


def _stats(counts, order):
    """Per score decile (low to high) mean count, then distinct examples drawn, then the largest count."""
    deciles = [d.mean() for d in np.array_split(counts[order], 10)]
    return np.array([*deciles, np.count_nonzero(counts), counts.max()], dtype=np.float64)


# (pool rows, cap K, draws T, batch B, score scale, runs): at B = 1000 and 100,000 the batches are large
# against the pool and the cap binds inside a batch (the top rows are drawn far more than K times).
CASES = {1: (200, 3, 300, 1, 1.5, 150), 1000: (2000, 3, 4000, 1000, 1.5, 150), 100_000: (30_000, 5, 120_000, 100_000, 2.0, 40)}


@pytest.mark.parametrize("batch", list(CASES))
def test_batched_hcs_matches_the_sequential_hard_cap_process(batch):
    n, cap, total, b, scale, runs = CASES[batch]
    rng = np.random.default_rng(n)
    scores = rng.standard_normal(n) * scale
    order = np.argsort(scores)
    if b == 1:  # the definition itself, one draw at a time
        ref = [sequential_counts(scores, total, rng, cap=cap) for _ in range(runs)]
    else:  # the clock race, which test_sample_stats.py checks against the definition
        ref = [race_counts(scores, total, seed, method="hcs", cap=cap) for seed in range(runs)]
    ref = np.stack([_stats(c, order) for c in ref])
    got = [hard_cap_counts(scores, total, b, cap, seed=10_000 + r) for r in range(runs)]
    assert all(c.sum() == total and c.max() <= cap for c in got)
    got = np.stack([_stats(c, order) for c in got])
    bound = bonferroni_bound(ref.shape[1])
    z = z_scores(got, ref)
    assert np.abs(z).max() < bound, z
    if b > 1:
        # Power check: the former procedure (without replacement within a batch) is told apart.
        wrong = np.stack([_stats(batched_counts(scores, total, b, 0.0, cap=cap, seed=20_000 + r), order) for r in range(runs)])
        assert np.abs(z_scores(wrong, ref)).max() > bound


def test_cli_batched_hcs_reaches_the_cap(tmp_path):
    """The issue's symptom: a batch larger than the pool still fills examples up to the cap."""
    rng = np.random.default_rng(8)
    uids, scores = random_uids(2000, rng), (rng.standard_normal(2000) * 2).astype(np.float32)
    _shards(tmp_path / "pool", uids, scores, shards=2)
    out = _flyt(tmp_path, tmp_path / "pool", "hcs", "--method", "hcs", "--cap", "6", "--total", "8000", "--batch", "5000")
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["total"] == 8000 and summary["max_count"] == 6 and summary["procedure"] == "batched"
