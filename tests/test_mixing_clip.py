"""M-FLYT's clipped z-scores (``score_clip``): the transform, its round trip through scorer.pt, and
the outlier-leverage effect that motivates it."""

import numpy as np
import pytest
import torch

from flyt.errors import FlytError
from flyt.models.checkpoint import build_model
from flyt.models.mixing import ScoreMixer


def _outlier_column(n=1000, rare=5, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal(n)
    sparse = np.zeros(n)
    sparse[rng.choice(n, rare, replace=False)] = 1.0  # e.g. caption_non_latin: 0 for almost every row
    return np.stack([dense, sparse], axis=1)


def test_clip_bounds_the_rare_rows_and_keeps_the_bulk():
    scores = _outlier_column()
    plain = ScoreMixer.fit_statistics(["dense", "sparse"], scores)
    clipped = ScoreMixer.fit_statistics(["dense", "sparse"], scores, clip=3.0)
    z_plain = plain.standardise(torch.as_tensor(scores)).double().numpy()
    z_clip = clipped.standardise(torch.as_tensor(scores)).double().numpy()
    assert z_plain[:, 1].max() > 10  # the rare rows' z-score: sqrt((1-p)/p) ~ 14 at p = 0.5%
    assert z_clip.max() <= 3.0 and z_clip.min() >= -3.0
    inside = np.abs(z_plain) < 3.0
    np.testing.assert_array_equal(z_clip[inside], z_plain[inside])  # the bulk is untouched
    # An independent computation of the same transform.
    expect = np.clip((scores - scores.mean(0)) / scores.std(0), -3, 3).astype(np.float32)
    np.testing.assert_allclose(z_clip, expect, rtol=1e-6, atol=1e-6)


def test_clip_travels_with_the_model_and_old_configs_load_unchanged():
    scores = _outlier_column()
    mixer = ScoreMixer.fit_statistics(["dense", "sparse"], scores, clip=2.5)
    cfg = mixer.config()
    assert cfg["clip"] == 2.5
    rebuilt = build_model("mflyt", cfg)
    x = torch.as_tensor(scores)
    torch.testing.assert_close(rebuilt.standardise(x), mixer.standardise(x), rtol=0, atol=0)
    plain = ScoreMixer.fit_statistics(["dense", "sparse"], scores)
    assert "clip" not in plain.config()  # a plain mixer's scorer.pt is as before
    assert build_model("mflyt", plain.config()).clip is None


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_bad_clip_is_refused(bad):
    with pytest.raises(FlytError, match="clip"):
        ScoreMixer(["a"], [0.0], [1.0], clip=bad)


def test_clip_limits_the_weight_a_few_rows_can_buy():
    """One gradient step of the mixer on a loss that rewards only the 5 rare rows: the step size on
    the sparse input's weight shrinks by about the clip ratio (~14 -> 3)."""
    scores = _outlier_column()
    x = torch.as_tensor(scores)
    rare = torch.as_tensor(scores[:, 1] > 0)
    grads = {}
    for clip in (None, 3.0):
        m = ScoreMixer.fit_statistics(["dense", "sparse"], scores, clip=clip).double()
        logits = m(x)
        loss = -torch.log_softmax(logits, 0)[rare].sum()
        loss.backward()
        grads[clip] = m.linear.weight.grad.reshape(-1)[1].abs().item()
    assert grads[3.0] < 0.35 * grads[None]
