"""Baseline scorers against direct (loop / dense float64) computations."""

import math

import numpy as np
import pytest
from tests._score_helpers import unit

from flyt.errors import FlytError
from flyt.scorers import ScorerOptions, make_scorer, make_scorers
from flyt.scorers.caption import caption_stats
from flyt.scorers.classifier import LinearProbe
from flyt.scorers.clip import clip_score, negclip_loss
from flyt.scorers.image_based import nearest_centroid
from flyt.scorers.normsim import normsim


def test_clip_score_is_cosine():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((20, 7)), rng.standard_normal((20, 7))
    want = [a[i] @ b[i] / math.sqrt((a[i] @ a[i]) * (b[i] @ b[i])) for i in range(20)]
    assert np.allclose(clip_score(a, b), want, atol=1e-6)


def _negclip_direct(v, t, ref_v, ref_t, uids, ref_uids, K, tau):
    """Per example and reference batch: build the batch {i} + B_k, its similarity matrix, and take
    row i's and column i's log-sum-exp, exactly as in a CLIP loss over that batch."""
    m = len(ref_v) // K
    out = []
    for i in range(len(v)):
        norms = []
        for k in range(K):
            keep = [j for j in range(k * m, (k + 1) * m) if ref_uids[j] != uids[i]]
            V = np.vstack([v[i : i + 1], ref_v[keep]]).astype(np.float64)
            T = np.vstack([t[i : i + 1], ref_t[keep]]).astype(np.float64)
            S = V @ T.T / tau
            row = math.log(sum(math.exp(x) for x in S[0]))
            col = math.log(sum(math.exp(x) for x in S[:, 0]))
            norms.append(tau / 2 * (row + col))
        out.append(float(v[i] @ t[i]) - sum(norms) / K)
    return np.array(out)


@pytest.mark.parametrize("tau", [0.01, 0.07])
def test_negclip_loss_matches_dense_direct(tau):
    rng = np.random.default_rng(1)
    n, K, m, d = 12, 3, 5, 8
    v, t = unit(rng, n, d).astype(np.float32), unit(rng, n, d).astype(np.float32)
    uids = np.array([f"{i:032x}" for i in range(n)])
    # reference rows: other pool rows plus two of the scored rows themselves (must be masked)
    ref_v = np.vstack([unit(rng, K * m - 2, d), v[[3, 7]]]).astype(np.float32)
    ref_t = np.vstack([unit(rng, K * m - 2, d), t[[3, 7]]]).astype(np.float32)
    ref_uids = np.array([f"{1000 + j:032x}" for j in range(K * m - 2)] + [uids[3], uids[7]])
    got = negclip_loss(v, t, ref_v, ref_t, K, tau, uids, ref_uids, chunk_rows=5)
    want = _negclip_direct(v, t, ref_v, ref_t, uids, ref_uids, K, tau)
    assert np.allclose(got, want, atol=2e-5 if tau == 0.01 else 1e-6), np.abs(got - want).max()
    # the normaliser is not a constant shift: rankings differ from the plain CLIP score
    assert not np.allclose(got - clip_score(v, t), (got - clip_score(v, t)).mean())


def test_negclip_rejects_bad_options():
    with pytest.raises(FlytError, match="--negclip-batch-size"):
        make_scorer("negclip_loss", ScorerOptions(negclip_batch_size=1))
    with pytest.raises(FlytError, match="--teacher-temperature"):
        make_scorer("negclip_loss", ScorerOptions(teacher_temperature=0))


def test_normsim_matches_direct():
    rng = np.random.default_rng(2)
    x, targets = unit(rng, 9, 6), unit(rng, 23, 6)
    inf = [max(float(x[i] @ targets[j]) for j in range(23)) for i in range(9)]
    two = [math.sqrt(sum(float(x[i] @ targets[j]) ** 2 for j in range(23)) / 23) for i in range(9)]
    assert np.allclose(normsim(x, targets, np.inf, chunk=5), inf, atol=1e-6)
    assert np.allclose(normsim(x, targets, 2, chunk=5), two, atol=1e-6)
    with pytest.raises(FlytError):
        normsim(x, targets, 3)


def test_caption_stats():
    got = caption_stats(["a photo of a dog", "Привет мир", "東京 tower", None, "  ", "42!"])
    assert got["caption_words"].tolist() == [5, 2, 2, 0, 0, 1]
    assert got["caption_chars"].tolist() == [16, 10, 8, 0, 2, 3]
    assert np.allclose(got["caption_non_latin"], [0, 1, 2 / 7, 0, 0, 0])


def test_linear_probe_separates_and_roundtrips(tmp_path):
    rng = np.random.default_rng(3)
    centre = np.zeros(10)
    centre[0] = 2.0
    pos = unit(rng, 40, 10) * 0.5 + centre
    neg = unit(rng, 60, 10) * 0.5 - centre
    probe = LinearProbe.fit(pos, neg)
    assert probe.decision(pos).min() > probe.decision(neg).max()
    probe.save(tmp_path / "probe.npz")
    again = LinearProbe.load(tmp_path / "probe.npz")
    assert np.array_equal(again.decision(neg), probe.decision(neg))
    with pytest.raises(FlytError, match="does not exist"):
        LinearProbe.load(tmp_path / "nope.npz")


def test_nearest_centroid_matches_direct():
    rng = np.random.default_rng(4)
    x, c = rng.standard_normal((30, 5)), rng.standard_normal((7, 5))
    want = [int(np.argmin([np.sum((x[i] - c[k]) ** 2) for k in range(7)])) for i in range(30)]
    assert nearest_centroid(x, c, chunk_rows=8).tolist() == want


def test_registry():
    assert [s.output_columns() for s in make_scorers(["clip_score", "caption"])] == [
        ["clip_score"], ["caption_words", "caption_chars", "caption_non_latin"]]
    with pytest.raises(FlytError, match="unknown scorer 'clip_scor'"):
        make_scorer("clip_scor")
    with pytest.raises(FlytError, match="both write column 'clip_score'"):
        make_scorers(["clip_score", "clip_score"])
