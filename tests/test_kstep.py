"""K-step FLYT (issue 15): the exact meta-gradient through K unrolled reference steps.

The oracles here are independent of flyt.training.unrolled: a plain loop of K explicit optimizer steps
with torch.autograd (create_graph through every g_j, no torch.func), and central finite differences of
the downstream loss after K inner steps, in float64 on a tiny problem.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _kstep_helpers import OPT, N, data_parallel_rank, problem
from flyt.errors import FlytError
from flyt.models.losses import WeightedClipHead, weighted_clip_loss
from flyt.models.scoring_head import SwiGLUScorer
from flyt.synthetic import make_planted
from flyt.training.config import TrainConfig
from flyt.training.downstream import downstream_loss
from flyt.training.inner_step import adamw_init, adamw_step, sgd_step
from flyt.training.kstep import kstep_meta
from flyt.training.loop import train
from flyt.training.meta_gradient import meta_gradient, upstream_features
from flyt.training.unrolled import CurvedClipHead, InnerBatch, unrolled_meta_gradient

D = torch.float64
DIM = 5


def detached(state):
    return {"step": state["step"], **{key: {k: t.detach() for k, t in state[key].items()}
                                      for key in ("m", "v") if key in state}}


def oracle_grads(ref, params, state, psi, batches, tasks, step_fn=adamw_step, truncate=None):
    """dL_down/dlog w_j by back-propagating through K explicit steps (create_graph); truncation:
    theta and the optimizer state are cut from the graph after the first K - k steps."""
    K = len(batches)
    cut = K - (truncate or K)
    log_ws = [lw.detach().clone().requires_grad_(True) for _, _, lw in batches]
    theta, st = {k: p.detach().requires_grad_(True) for k, p in params.items()}, state
    for j, (image, text, _) in enumerate(batches):
        if j == cut:
            theta, st = {k: p.detach().requires_grad_(True) for k, p in theta.items()}, detached(st)
        loss = weighted_clip_loss(*upstream_features(ref, theta, image, text), log_ws[j])
        g = dict(zip(theta, torch.autograd.grad(loss, list(theta.values()), create_graph=True)))
        theta, st = step_fn(theta, g, st, OPT)
        theta = ref.clamp(theta)
    loss_down, _ = downstream_loss(ref, theta, psi, tasks)
    return torch.autograd.grad(loss_down, log_ws, allow_unused=True, materialize_grads=True)


def loss_after_k_steps(ref, params, state, psi, batches, log_ws, tasks, step_fn=adamw_step):
    """L_down(theta_K) as a plain function of the K batches' log-weights (for finite differences)."""
    theta, st = {k: p.detach() for k, p in params.items()}, state
    for (image, text, _), lw in zip(batches, log_ws):
        leaf = {k: p.requires_grad_(True) for k, p in ((k, p.clone()) for k, p in theta.items())}
        with torch.enable_grad():
            loss = weighted_clip_loss(*upstream_features(ref, leaf, image, text), lw)
            g = dict(zip(leaf, torch.autograd.grad(loss, list(leaf.values()))))
        theta, st = step_fn(theta, g, st, OPT)
        theta = ref.clamp(theta)
    return downstream_loss(ref, theta, psi, tasks)[0].detach()


def central_difference(f, x, h=1e-6):
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e.view(-1)[i] = h
        grad.view(-1)[i] = (f(x + e) - f(x - e)) / (2 * h)
    return grad


def unrolled(ref, params, state, psi, batches, tasks, step_fn=adamw_step, truncate=None):
    return unrolled_meta_gradient(ref, params, state, psi, [InnerBatch(*b) for b in batches], tasks, OPT, step_fn,
                                  truncate=truncate)


@pytest.mark.parametrize("K", [1, 2, 3])
def test_k_step_meta_gradient_matches_finite_differences(K):
    ref, params, state, psi, batches, tasks = problem(K, seed=K)
    got = torch.cat(unrolled(ref, params, state, psi, batches, tasks).grad_log_weights)
    flat = torch.cat([lw for _, _, lw in batches])
    fd = central_difference(lambda x: loss_after_k_steps(ref, params, state, psi, batches, x.split(N), tasks), flat)
    assert fd.abs().max() > 1e-4  # not vacuous
    torch.testing.assert_close(got, fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(got, torch.cat(oracle_grads(ref, params, state, psi, batches, tasks)),
                               rtol=1e-9, atol=1e-12)
    if K > 1:  # the early batches matter: their weights move the moments and theta the last step starts from
        assert fd[:N].abs().max() > 1e-4


@pytest.mark.parametrize("truncate", [1, 2, 3])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_truncated_meta_gradient_matches_a_truncated_oracle(truncate, optimizer):
    step_fn = adamw_step if optimizer == "adamw" else sgd_step
    ref, params, state, psi, batches, tasks = problem(3, seed=7)
    if optimizer == "sgd":
        state = {"step": 3}
    got = unrolled(ref, params, state, psi, batches, tasks, step_fn, truncate=truncate).grad_log_weights
    want = oracle_grads(ref, params, state, psi, batches, tasks, step_fn, truncate=truncate)
    for j, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        assert (a.abs().max() == 0) == (j < 3 - truncate)  # zero exactly outside the window
    if truncate == 3:  # k = K is the exact gradient
        exact = unrolled(ref, params, state, psi, batches, tasks, step_fn).grad_log_weights
        assert all(torch.equal(a, b) for a, b in zip(got, exact))
    else:  # and k < K is not
        assert not torch.allclose(torch.cat(got), torch.cat(oracle_grads(ref, params, state, psi, batches, tasks,
                                                                         step_fn)))


def test_one_unrolled_step_is_the_one_step_meta_gradient():
    ref, params, state, psi, batches, tasks = problem(1)
    one = meta_gradient(ref, params, state, psi, *batches[0], tasks, OPT)
    got = unrolled(ref, params, state, psi, batches, tasks)
    torch.testing.assert_close(got.grad_log_weights[0], one.grad_log_weights, rtol=1e-12, atol=1e-15)
    for k in params:
        torch.testing.assert_close(got.params[0][k], one.new_params[k], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(got.grad_psi, one.grad_psi, rtol=1e-12, atol=1e-15)


def test_curved_head_second_derivatives_match_autograd():
    g = torch.Generator().manual_seed(3)
    image = torch.nn.functional.normalize(torch.randn(9, 4, generator=g, dtype=D), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(9, 4, generator=g, dtype=D), dim=-1)
    s = torch.tensor(2.2, dtype=D).exp()
    log_w = torch.log_softmax(torch.randn(9, generator=g, dtype=D), 0)
    log_w[2] = -math.inf  # a zero weight too
    u = (torch.randn(9, 4, generator=g, dtype=D), torch.randn(9, 4, generator=g, dtype=D), torch.tensor(0.4, dtype=D))
    e = [image.clone().requires_grad_(True), text.clone().requires_grad_(True), s.clone().requires_grad_(True)]
    lw = log_w.clone().requires_grad_(True)
    grad_e = torch.autograd.grad(weighted_clip_loss(*e, lw), e, create_graph=True)
    directional = sum((ge * ue).sum() for ge, ue in zip(grad_e, u))
    *hu, grad_lw = torch.autograd.grad(directional, [*e, lw])

    got_lw, got_hu, got_e = CurvedClipHead(image, text, s, log_w).second_order(u)
    torch.testing.assert_close(got_lw, grad_lw)
    torch.testing.assert_close(got_lw, WeightedClipHead(image, text, s, log_w).weight_gradient(u))
    for a, b in zip(got_hu, hu):
        torch.testing.assert_close(a, b)
    for a, b in zip(got_e, grad_e):
        torch.testing.assert_close(a, b.detach())


@pytest.mark.parametrize("update_reference, advance", [(True, None), (True, 1), (False, None)])
def test_scorer_gradient_is_the_true_k_step_meta_gradient(update_reference, advance):
    """The loop's K-step scorer step (kstep_meta, its batch-by-batch backward) has the phi-gradient of
    L_down(theta_K(w_1(phi), .., w_K(phi))): central differences in phi, after two scorer steps in which
    the reference moved by K steps, by 1, or stayed."""
    K = 2
    ref, params, state, psi, batches, tasks = problem(K, seed=5)
    torch.manual_seed(0)
    scorer = SwiGLUScorer(DIM, DIM, hidden_dim=3).to(D)
    cfg = SimpleNamespace(mode="flyt", inner_steps=K, truncate=None, reference_advance=advance)
    draws = [SimpleNamespace(uids=np.arange(N), image=b[0].numpy(), text=b[1].numpy(), scores=None) for b in batches]

    def step():
        return kstep_meta(cfg, scorer, draws, tasks, ref, params, state, psi, OPT, adamw_step, _Comm(), D, "cpu")

    for _ in range(2):  # earlier scorer steps, as in the loop
        meta = step()
        if update_reference:
            params, state = meta.new_params, meta.new_state
    assert state["step"] == 3 + (2 * (advance or K) if update_reference else 0)

    meta = step()
    scorer.zero_grad()
    meta.backward()
    analytic = torch.cat([p.grad.reshape(-1) for p in scorer.parameters()])
    flat = torch.nn.utils.parameters_to_vector(scorer.parameters()).detach()

    def loss_at(vec):
        torch.nn.utils.vector_to_parameters(vec, scorer.parameters())
        with torch.no_grad():
            log_ws = [torch.log_softmax(scorer(b[0], b[1]), 0) for b in batches]
        return loss_after_k_steps(ref, params, state, psi, batches, log_ws, tasks)

    fd = central_difference(loss_at, flat, h=1e-5)
    torch.nn.utils.vector_to_parameters(flat, scorer.parameters())
    assert fd.norm() > 1e-6
    assert (analytic - fd).norm() / fd.norm() < 1e-5


class _Comm:
    """One process (flyt.training.distributed.Comm), spelled out so the test does not depend on it."""

    rank, world = 0, 1

    def chunk(self, x, n=None):
        return x

    def gather(self, x, n):
        return x

    def gather_with_grad(self, x, n):
        return x

    def sum(self, tensors):
        return tensors


# ------------------------------------------------------------------------------------------------
# The training loop


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"), n=600, num_shards=2, dim=8, seed=0)


def config(planted, out, **extra):
    return {"pool": str(planted["pool"]), "tasks": [str(planted["tasks"][0])], "out": str(out), "steps": 6,
            "upstream_batch": 64, "downstream_batch": 32, "warmup_steps": 2, "scorer_lr": 0.01,
            "reference_lr": 0.03, **extra}


def scorer_bytes(path):
    state = torch.load(path, weights_only=True)["state_dict"]
    return b"".join(k.encode() + v.numpy().tobytes() for k, v in state.items())


def test_inner_steps_1_is_the_one_step_code_path_bit_for_bit(planted, tmp_path, monkeypatch):
    """K = 1 (the default, or set explicitly) never enters the K-step code and gives the same bytes."""
    import flyt.training.loop as loop

    def refuse(*args, **kwargs):
        raise AssertionError("K = 1 must keep the one-step path")

    default = train(config(planted, tmp_path / "default"), progress=False)
    monkeypatch.setattr(loop, "kstep_meta", refuse)
    explicit = train(config(planted, tmp_path / "k1", inner_steps=1, reference_advance=1, truncate=1), progress=False)
    assert scorer_bytes(default) == scorer_bytes(explicit)


class Killed(Exception):
    pass


@pytest.mark.parametrize("extra", [
    {"inner_steps": 3},
    {"inner_steps": 2, "truncate": 1, "reference_advance": 1, "mode": "mflyt",
     "score_columns": ["noise_score", "informative_score"]},
])
def test_k_step_run_resumes_bit_identically(planted, tmp_path, monkeypatch, extra):
    import flyt.training.loop as loop

    whole = train(config(planted, tmp_path / "whole", checkpoint_every=2, **extra), progress=False)
    real, calls = loop.kstep_meta, {"n": 0}

    def dies_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "kstep_meta", dies_at_step_5)
    cfg = config(planted, tmp_path / "killed", checkpoint_every=2, **extra)
    with pytest.raises(Killed):
        train(cfg, progress=False)
    assert torch.load(tmp_path / "killed" / "checkpoints" / "latest.pt", weights_only=False)["step"] == 4
    monkeypatch.setattr(loop, "kstep_meta", real)
    resumed = train(cfg, resume=True, progress=False)
    assert scorer_bytes(resumed) == scorer_bytes(whole)


def test_k_steps_change_the_scorer(planted, tmp_path):
    """Not vacuous: K = 2 trains another scorer than K = 1, and reference_advance 1 another than K."""
    runs = [train(config(planted, tmp_path / name, steps=3, **extra), progress=False)
            for name, extra in (("k1", {}), ("k2", {"inner_steps": 2}), ("k2a1", {"inner_steps": 2, "reference_advance": 1}))]
    assert len({scorer_bytes(r) for r in runs}) == 3


@pytest.mark.parametrize("update, needle", [
    ({"inner_steps": 2, "reference": {"kind": "openclip", "pool_shards": ["s.tar"]}},
     "config key 'inner_steps' must be 1 with reference.kind openclip (K-step FLYT needs the embedding reference), got 2"),
    ({"inner_steps": 3, "truncate": 4}, "config key 'truncate' must be null or an integer in [1, inner_steps = 3], got 4"),
    ({"inner_steps": 4, "reference_advance": 2}, "config key 'reference_advance' must be null, 1 or inner_steps (4), got 2"),
    ({"inner_steps": 0}, "config key 'inner_steps' must be a positive integer, got 0"),
])
def test_bad_k_step_keys_are_one_line(update, needle):
    with pytest.raises(FlytError) as err:
        TrainConfig.from_dict({"pool": "p", "tasks": ["t"], **update})
    assert str(err.value) == needle


def test_adamw_init_state_is_a_valid_start():
    """K steps from a fresh optimizer state (step 0, zero moments) match the oracle too."""
    ref, params, _, psi, batches, tasks = problem(2, seed=9)
    state = adamw_init(params)
    got = unrolled(ref, params, state, psi, batches, tasks).grad_log_weights
    for a, b in zip(got, oracle_grads(ref, params, state, psi, batches, tasks)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_data_parallel_matches_one_process(tmp_path):
    """Two gloo ranks, each with its rows of every batch and task, give the one-process gradients."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(data_parallel_rank, args=(2, port, str(tmp_path / "rank0.pt")), nprocs=2)
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)
    ref, params, state, psi, batches, tasks = problem(3, seed=4)
    one = unrolled(ref, params, state, psi, batches, tasks, truncate=2)
    for a, b in zip(got["grads"], one.grad_log_weights):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    for k in params:
        torch.testing.assert_close(got["params"][k], one.params[-1][k], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got["psi"], one.grad_psi, rtol=1e-10, atol=1e-14)
