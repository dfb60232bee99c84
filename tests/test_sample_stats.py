"""Statistical equivalence of the clock race with the sampling processes it claims to be.

Statistic: for each example, a two-sample z score of its mean count over R independent runs
(race with seeds 0..R-1 vs the reference sampler with a seeded numpy generator); the test fails if
any |z| exceeds the Bonferroni bound for family-wise level 1e-3 over the examples. All seeds are
fixed, so the outcome is reproducible; each test also shows the statistic rejects a wrong model.
"""

from functools import lru_cache

import numpy as np

from _sample_helpers import bonferroni_bound, race_counts, sequential_counts, z_scores
from flyt.sampling.batched import batched_counts

SCORES = np.array([0.0, 0.5, 1.0, -1.0, 2.0, 0.3, -0.4, 1.5])
R = 1500


@lru_cache(maxsize=None)
def _race_cached(total, kw_items):
    return np.stack([race_counts(SCORES, total, seed, **dict(kw_items)) for seed in range(R)])


def _race(total, **kw):
    return _race_cached(total, tuple(sorted(kw.items())))


def test_scs_race_matches_sequential_process():
    rng = np.random.default_rng(123)
    race = _race(20, penalty=0.5, temperature=0.8)
    seq = np.stack([sequential_counts(SCORES, 20, rng, penalty=0.5, temperature=0.8) for _ in range(R)])
    assert (race.sum(axis=1) == 20).all()
    z = z_scores(race, seq)
    assert np.abs(z).max() < bonferroni_bound(len(SCORES)), z
    # Power check: the same statistic tells a different penalty apart.
    wrong = np.stack([sequential_counts(SCORES, 20, rng, penalty=0.9, temperature=0.8) for _ in range(R)])
    assert np.abs(z_scores(race, wrong)).max() > bonferroni_bound(len(SCORES))


def test_hcs_race_matches_sequential_process_with_cap():
    rng = np.random.default_rng(7)
    race = _race(12, method="hcs", cap=2)
    seq = np.stack([sequential_counts(SCORES, 12, rng, cap=2) for _ in range(R)])
    assert race.max() <= 2 and (race.sum(axis=1) == 12).all()
    z = z_scores(race, seq)
    assert np.abs(z).max() < bonferroni_bound(len(SCORES)), z
    wrong = np.stack([sequential_counts(SCORES, 12, rng, cap=3) for _ in range(R)])
    assert np.abs(z_scores(race, wrong)).max() > bonferroni_bound(len(SCORES))


def test_batched_procedure_with_batch_one_matches_race():
    race = _race(20, penalty=0.5, temperature=0.8)
    bat = np.stack([batched_counts(SCORES, 20, 1, 0.5, temperature=0.8, seed=10_000 + r) for r in range(R)])
    z = z_scores(race, bat)
    assert np.abs(z).max() < bonferroni_bound(len(SCORES)), z


def test_batched_procedure_with_small_batch_agrees_with_race():
    # b = 2 on a 60-example pool (b/pool = 3%): the batched procedure's deviation from the
    # sequential process is below what 600 runs can resolve.
    rng = np.random.default_rng(5)
    scores = rng.standard_normal(60)
    runs = 600
    race = np.stack([race_counts(scores, 90, seed, penalty=0.25) for seed in range(runs)])
    bat = np.stack([batched_counts(scores, 90, 2, 0.25, seed=50_000 + r) for r in range(runs)])
    z = z_scores(race, bat)
    assert np.abs(z).max() < bonferroni_bound(len(scores)), z
    # ... while a batch of half the pool is clearly a different process.
    big = np.stack([batched_counts(scores, 90, 30, 0.25, seed=90_000 + r) for r in range(runs)])
    assert np.abs(z_scores(race, big)).max() > bonferroni_bound(len(scores))
