"""Shared fixtures for the sampling tests: score directories and direct reference samplers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.io.uids import UID_DTYPE, random_uids
from flyt.sampling import ArrayScores, SampleSpec, sample


def write_scores(directory: Path, uids, scores, shards: int = 1, names=None, column: str = "clip") -> Path:
    """Split (uids, scores) into ``shards`` parquet files (contiguous pieces) named ``names``."""
    directory.mkdir(parents=True, exist_ok=True)
    pieces = np.array_split(np.arange(len(uids)), shards)
    names = names or [f"part-{i:03d}" for i in range(shards)]
    for name, idx in zip(names, pieces):
        table = pa.table({"uid": pa.array(np.asarray(uids)[idx], pa.string()), column: pa.array(np.asarray(scores)[idx])})
        pq.write_table(table, directory / f"{name}.parquet")
    return directory


def small_pool(n: int, seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return random_uids(n, rng), (rng.standard_normal(n) * scale).astype(np.float32)


def counting_pairs(n: int) -> np.ndarray:
    """uids 1..n as pairs (deliberately not random: the hashing must cope)."""
    pairs = np.zeros(n, dtype=UID_DTYPE)
    pairs["f1"] = np.arange(1, n + 1, dtype=np.uint64)
    return pairs


def race_counts(scores, total, seed, method="scs", penalty=None, cap=None, temperature=1.0):
    """Counts per example (in input order) from the clock race, via the public API."""
    pairs = counting_pairs(len(scores))
    spec = SampleSpec(method, total=total, penalty=penalty, cap=cap, temperature=temperature, seed=seed)
    result = sample(spec, [ArrayScores(pairs, np.asarray(scores, dtype=np.float64))])
    counts = np.zeros(len(scores), dtype=np.int64)
    counts[result.pairs["f1"].astype(np.int64) - 1] = result.counts
    return counts


def sequential_counts(scores, total, rng, penalty=0.0, cap=None, temperature=1.0):
    """The definition, one draw at a time: P(i) ~ exp(s_i/T - penalty*c_i), capped examples out."""
    s = np.asarray(scores, dtype=np.float64) / temperature
    c = np.zeros(len(s), dtype=np.int64)
    for _ in range(total):
        logits = s - penalty * c
        if cap is not None:
            logits = np.where(c >= cap, -np.inf, logits)
        w = np.exp(logits - logits.max())
        c[rng.choice(len(s), p=w / w.sum())] += 1
    return c


def z_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sample z statistic of the per-example mean counts (rows = repetitions)."""
    se = np.sqrt(x.var(axis=0, ddof=1) / len(x) + y.var(axis=0, ddof=1) / len(y))
    diff = x.mean(axis=0) - y.mean(axis=0)
    return np.where(se > 0, diff / np.where(se > 0, se, 1), np.where(diff == 0, 0.0, np.inf))


def bonferroni_bound(n_tests: int, alpha: float = 1e-3) -> float:
    """|z| above this rejects at family-wise level alpha (two-sided, Bonferroni over n_tests)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha / (2 * n_tests))
