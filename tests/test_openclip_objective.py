"""The open_clip reference: SPEC.md 2 step 6's efficient meta-gradient through a whole (tiny) CLIP."""

import math

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from _train_oracles import downstream_after_step, meta_gradient_double_backward  # noqa: E402
from flyt.models.openclip_reference import TINY_MODEL, OpenCLIPReference  # noqa: E402
from flyt.training.downstream import TaskBatch  # noqa: E402
from flyt.training.inner_step import AdamWConfig  # noqa: E402
from flyt.training.meta_gradient import meta_gradient  # noqa: E402

D = torch.float64


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    ref = OpenCLIPReference(TINY_MODEL)
    params = ref.init_params(dtype=D)
    g = torch.Generator().manual_seed(1)
    # warm Adam moments: constants of this step, but they make the step non-trivial
    state = {
        "step": 3,
        "m": {k: 1e-3 * torch.randn(v.shape, generator=g, dtype=D) for k, v in params.items()},
        "v": {k: 1e-5 * torch.rand(v.shape, generator=g, dtype=D) for k, v in params.items()},
    }
    up_image = torch.randn(6, 3, 32, 32, generator=g, dtype=D)
    up_text = ref.tokens(["a cat", "a dog on a mat", "a red car", "blue sky", "x", "a photo of y"])
    tasks = [
        TaskBatch(torch.randn(5, 3, 32, 32, generator=g, dtype=D), torch.tensor([0, 1, 2, 0, 1]),
                  ref.tokens(["a photo of a cat", "a photo of a dog", "a photo of a car"])),
        TaskBatch(torch.randn(4, 3, 32, 32, generator=g, dtype=D), torch.tensor([1, 0, 1, 1]),
                  ref.tokens(["day", "night"])),
    ]
    psi = torch.tensor(math.log(1 / 0.07), dtype=D)
    log_w = torch.log_softmax(torch.randn(6, generator=g, dtype=D), 0)
    return ref, params, state, psi, up_image, up_text, log_w, tasks


def test_tiny_model_is_a_real_clip(problem):
    ref, params, *_ = problem
    assert "visual.conv1.weight" in params and "token_embedding.weight" in params and "logit_scale" in params
    x = ref.encode_image(params, torch.zeros(2, 3, 32, 32, dtype=D))
    assert x.shape == (2, 32) and x.dtype == D
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(2, dtype=D))


def test_efficient_meta_gradient_equals_double_backprop_whole_model(problem):
    """Tolerance: rtol 1e-9, atol 1e-12 in float64 (measured difference ~3e-16)."""
    ref, params, state, psi, ui, ut, log_w, tasks = problem
    opt = AdamWConfig(lr=1e-3)
    meta = meta_gradient(ref, params, state, psi, ui, ut, log_w, tasks, opt)
    double = meta_gradient_double_backward(ref, params, state, psi, ui, ut, log_w, tasks, opt)
    assert double.abs().max() > 1e-4  # not vacuous
    torch.testing.assert_close(meta.grad_log_weights, double, rtol=1e-9, atol=1e-12)
    # the downstream loss it reports is the one after the step (independent recomputation)
    direct = downstream_after_step(ref, params, state, psi, ui, ut, log_w, tasks, opt)
    assert meta.downstream_loss == pytest.approx(float(direct), rel=1e-12)


def test_meta_gradient_matches_finite_differences(problem):
    ref, params, state, psi, ui, ut, log_w, tasks = problem
    opt = AdamWConfig(lr=1e-3)
    meta = meta_gradient(ref, params, state, psi, ui, ut, log_w, tasks, opt).grad_log_weights
    h = 1e-5
    for i in (0, 3):
        e = torch.zeros_like(log_w)
        e[i] = h
        plus = downstream_after_step(ref, params, state, psi, ui, ut, log_w + e, tasks, opt)
        minus = downstream_after_step(ref, params, state, psi, ui, ut, log_w - e, tasks, opt)
        assert float(meta[i]) == pytest.approx(float((plus - minus) / (2 * h)), rel=1e-5, abs=1e-9)


def test_chunked_towers_give_the_same_meta_gradient(problem):
    ref, params, state, psi, ui, ut, log_w, tasks = problem
    opt = AdamWConfig(lr=1e-3)
    whole = meta_gradient(ref, params, state, psi, ui, ut, log_w, tasks, opt)
    chunked = meta_gradient(ref, params, state, psi, ui, ut, log_w, tasks, opt, chunk=4)  # chunks of 4 and 2
    torch.testing.assert_close(chunked.grad_log_weights, whole.grad_log_weights, rtol=1e-9, atol=1e-12)
    for k in whole.new_params:
        torch.testing.assert_close(chunked.new_params[k], whole.new_params[k], rtol=1e-9, atol=1e-12)
