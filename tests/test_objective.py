"""The FLYT objective: losses, the differentiable optimizer step and the exact meta-gradient."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _train_oracles import downstream_after_step, meta_gradient_double_backward
from flyt.models.losses import WeightedClipHead, clip_loss, weighted_clip_loss
from flyt.models.mixing import ScoreMixer
from flyt.models.reference import EmbeddingReference
from flyt.models.scoring_head import SwiGLUScorer
from flyt.training.downstream import TaskBatch
from flyt.training.inner_step import AdamWConfig, adamw_init, adamw_step, sgd_step
from flyt.training.meta_gradient import meta_gradient

D = torch.float64


def tiny_problem(seed=0, n=10, d=5, num_tasks=2, warm_state=True, init="random"):
    g = torch.Generator().manual_seed(seed)
    ref = EmbeddingReference(d, d, init=init)
    params = ref.init_params(g, dtype=D)
    state = adamw_init(params)
    if warm_state:  # moments of earlier steps: constants of this step
        state = {
            "step": 3,
            "m": {k: 1e-2 * torch.randn(v.shape, generator=g, dtype=D) for k, v in params.items()},
            "v": {k: 1e-3 * torch.rand(v.shape, generator=g, dtype=D) for k, v in params.items()},
        }
    up_img = torch.randn(n, d, generator=g, dtype=D)
    up_txt = torch.randn(n, d, generator=g, dtype=D)
    tasks = [
        TaskBatch(
            torch.randn(7, d, generator=g, dtype=D),
            torch.randint(0, 3 + k, (7,), generator=g),
            torch.randn(3 + k, d, generator=g, dtype=D),
        )
        for k in range(num_tasks)
    ]
    psi = torch.tensor(math.log(1 / 0.07), dtype=D)
    return ref, params, state, psi, up_img, up_txt, tasks


def central_difference(f, x, h=1e-6):
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        grad.view(-1)[i] = (f(x + e) - f(x - e)) / (2 * h)
    return grad


@pytest.mark.parametrize("num_tasks", [1, 3])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_meta_gradient_matches_finite_differences(num_tasks, optimizer):
    ref, params, state, psi, ui, ut, tasks = tiny_problem(num_tasks=num_tasks)
    opt = AdamWConfig(lr=1e-2)
    step_fn = adamw_step if optimizer == "adamw" else sgd_step
    log_w = torch.log_softmax(torch.randn(len(ui), generator=torch.Generator().manual_seed(5), dtype=D), 0)
    efficient = meta_gradient(ref, params, state, psi, ui, ut, log_w, tasks, opt, step_fn).grad_log_weights
    double = meta_gradient_double_backward(ref, params, state, psi, ui, ut, log_w, tasks, opt, step_fn)
    fd = central_difference(
        lambda lw: downstream_after_step(ref, params, state, psi, ui, ut, lw, tasks, opt, step_fn), log_w
    )
    assert fd.abs().max() > 1e-4  # the check is not vacuous
    torch.testing.assert_close(efficient, fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(double, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("update_reference", [True, False])
@pytest.mark.parametrize("num_tasks", [1, 2])
def test_scorer_gradient_is_the_true_meta_gradient(update_reference, num_tasks):
    """d/dphi of the scorer loss == central differences of L_down(theta'(w(phi))) in phi, after a
    few steps in which the reference (and its Adam state) moved or stayed."""
    torch.manual_seed(0)
    # A warm Adam state (t=3): with update off it stays as it is (a first Adam step from zero moments
    # is sign-like and has an almost-zero meta-gradient, which would make this check vacuous).
    ref, params, state, psi, ui, ut, tasks = tiny_problem(num_tasks=num_tasks, warm_state=True)
    opt = AdamWConfig(lr=1e-2)
    scorer = SwiGLUScorer(5, 5, hidden_dim=4).to(D)
    for _ in range(3):  # earlier steps, as in the training loop
        log_w = torch.log_softmax(scorer(ui, ut), 0)
        meta = meta_gradient(ref, params, state, psi, ui, ut, log_w, tasks, opt)
        if update_reference:
            params, state = meta.new_params, meta.new_state
    assert state["step"] == (6 if update_reference else 3)

    log_w = torch.log_softmax(scorer(ui, ut), 0)
    meta = meta_gradient(ref, params, state, psi, ui, ut, log_w, tasks, opt)
    scorer.zero_grad()
    (log_w * meta.grad_log_weights).sum().backward()
    analytic = torch.cat([p.grad.reshape(-1) for p in scorer.parameters()])

    flat = torch.nn.utils.parameters_to_vector(scorer.parameters()).detach()

    def loss_at(vec):
        torch.nn.utils.vector_to_parameters(vec, scorer.parameters())
        with torch.no_grad():
            lw = torch.log_softmax(scorer(ui, ut), 0)
        return downstream_after_step(ref, params, state, psi, ui, ut, lw, tasks, opt)

    fd = central_difference(loss_at, flat, h=1e-5)
    torch.nn.utils.vector_to_parameters(flat, scorer.parameters())
    assert fd.norm() > 1e-6  # the check is not vacuous
    # central differences carry O(h^2) truncation and O(eps/h) rounding: compare as a whole vector
    assert (analytic - fd).norm() / fd.norm() < 1e-5


def features(n=8, d=6, seed=1):
    """Normalised features and the exponentiated logit scale s = exp(2.3) (open_clip's loss argument)."""
    g = torch.Generator().manual_seed(seed)
    I = F.normalize(torch.randn(n, d, generator=g, dtype=D), dim=-1)
    T = F.normalize(torch.randn(n, d, generator=g, dtype=D), dim=-1)
    return I, T, torch.tensor(2.3, dtype=D).exp()


def test_uniform_weights_on_subset_give_clip_loss_of_subset():
    I, T, t = features()
    subset = torch.tensor([0, 2, 3, 6])
    log_w = torch.full((len(I),), -math.inf, dtype=D)
    log_w[subset] = -math.log(len(subset))
    weighted = weighted_clip_loss(I, T, t, log_w)
    plain = clip_loss(I[subset], T[subset], t)
    torch.testing.assert_close(weighted, plain - math.log(len(subset)))


def test_zero_weight_examples_change_neither_loss_nor_gradients():
    I, T, t = features()
    log_w = torch.log_softmax(torch.randn(len(I), dtype=D), 0)
    log_w[[1, 5]] = -math.inf
    ref = EmbeddingReference(6, 6, init="random")
    params = ref.init_params(torch.Generator().manual_seed(0), dtype=D)

    def loss_and_grads(img, txt):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = weighted_clip_loss(ref.encode_image(p, img), ref.encode_text(p, txt), p["logit_scale"].exp(), log_w)
        return loss, torch.autograd.grad(loss, list(p.values()))

    loss_a, grads_a = loss_and_grads(I, T)
    I2, T2 = I.clone(), T.clone()
    I2[[1, 5]] = torch.randn(2, 6, dtype=D)  # whatever the zero-weight examples are...
    T2[[1, 5]] = torch.randn(2, 6, dtype=D)
    loss_b, grads_b = loss_and_grads(I2, T2)
    torch.testing.assert_close(loss_a, loss_b)  # ...nothing changes
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)
    # and their own features get no gradient
    I3 = I.clone().requires_grad_(True)
    weighted_clip_loss(I3, T, t, log_w).backward()
    assert torch.all(I3.grad[[1, 5]] == 0) and I3.grad[0].abs().sum() > 0


def test_adamw_step_matches_torch_adamw():
    torch.manual_seed(0)
    params = {"w": torch.randn(4, 3, dtype=D), "b": torch.randn(3, dtype=D)}
    cfg = AdamWConfig(lr=1e-2, weight_decay=0.2)
    state = adamw_init(params)
    torch_params = [torch.nn.Parameter(params["w"].clone()), torch.nn.Parameter(params["b"].clone())]
    opt = torch.optim.AdamW(
        [{"params": [torch_params[0]], "weight_decay": 0.2}, {"params": [torch_params[1]], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.98), eps=1e-6,
    )
    for _ in range(4):
        grads = {"w": torch.randn(4, 3, dtype=D), "b": torch.randn(3, dtype=D)}
        params, state = adamw_step(params, grads, state, cfg)
        torch_params[0].grad, torch_params[1].grad = grads["w"].clone(), grads["b"].clone()
        opt.step()
    torch.testing.assert_close(params["w"], torch_params[0].detach())
    torch.testing.assert_close(params["b"], torch_params[1].detach())


def test_adamw_step_is_finite_where_gradient_and_moment_are_zero():
    params = {"w": torch.ones(2, 2, dtype=D)}
    g = torch.zeros(2, 2, dtype=D, requires_grad=True)
    new, _ = adamw_step(params, {"w": g}, adamw_init(params), AdamWConfig())
    (grad,) = torch.autograd.grad(new["w"].sum(), g)
    assert torch.isfinite(grad).all()


def test_cosine_init_scores_like_cosine_similarity():
    torch.manual_seed(0)
    d = 64
    scorer = SwiGLUScorer(d, d, cosine_init=True)
    I = F.normalize(torch.randn(500, d), dim=-1)
    T = F.normalize(I + 0.8 * torch.randn(500, d) / d**0.5 * torch.rand(500, 1) * 4, dim=-1)
    cos = (I * T).sum(-1)
    with torch.no_grad():
        s = scorer(I, T)
    assert np.corrcoef(s.numpy(), cos.numpy())[0, 1] > 0.98
    deep = SwiGLUScorer(d, d, depth=3, cosine_init=True)
    with torch.no_grad():
        assert np.corrcoef(deep(I, T).numpy(), cos.numpy())[0, 1] > 0.98


def test_score_mixer_standardises_with_pool_statistics():
    scores = np.random.default_rng(0).normal([5.0, -2.0], [3.0, 0.1], size=(1000, 2))
    mixer = ScoreMixer.fit_statistics(["a", "b"], scores)
    with torch.no_grad():
        mixer.linear.weight.copy_(torch.tensor([[1.0, 0.0]]))
        z = mixer(torch.as_tensor(scores)).numpy()
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    assert mixer.weights() == {"a": 1.0, "b": 0.0}


def test_weighted_clip_head_closed_forms_match_autograd():
    I, T, t = features(n=9, d=5, seed=4)
    log_w = torch.log_softmax(torch.randn(9, dtype=D), 0)
    log_w[3] = -math.inf  # a zero weight too
    g = torch.Generator().manual_seed(7)
    u = (torch.randn(9, 5, generator=g, dtype=D), torch.randn(9, 5, generator=g, dtype=D), torch.tensor(0.3, dtype=D))

    e = [I.clone().requires_grad_(True), T.clone().requires_grad_(True), t.clone().requires_grad_(True)]
    lw = log_w.clone().requires_grad_(True)
    loss = weighted_clip_loss(*e, lw)
    grad_e = torch.autograd.grad(loss, e, create_graph=True)
    (grad_lw,) = torch.autograd.grad(sum((ge * ue).sum() for ge, ue in zip(grad_e, u)), lw)

    head = WeightedClipHead(I, T, t, log_w)
    torch.testing.assert_close(head.loss, loss.detach())
    for closed, auto in zip(head.feature_gradients(), grad_e):
        torch.testing.assert_close(closed, auto.detach())
    torch.testing.assert_close(head.weight_gradient(u), grad_lw)
    assert head.weight_gradient(u)[3] == 0 and grad_lw.abs().max() > 1e-3


def test_forward_mode_ad_prints_no_torch_deprecation_warning():
    """torch 2.14's jvp lazily imports decompositions that warn about torch.jit.script; flyt imports
    them quietly so a training run's output stays clean (run in a fresh interpreter: import once)."""
    import subprocess
    import sys

    code = ("import torch, flyt.training.meta_gradient\nfrom torch.func import jvp\n"
            "jvp(lambda x: 2 * x, (torch.ones(2),), (torch.ones(2),))\n")
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
