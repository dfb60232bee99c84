"""The FLYT meta-gradient (SPEC.md section 2), written out.

One step, for upstream pool batch B with log-weights log w = log_softmax(q_phi(x_B)):

    S_ij   = s <I_i, T_j>,  s = exp(t)             (t: the reference's log logit scale, a parameter)
    L_img  = - sum_i w_i [ S_ii - logsumexp_j (S_ij + log w_j) ]           (L_txt: S transposed)
    L_up   = (L_img + L_txt) / 2                                             (models/losses.py)
    g      = grad_theta L_up(theta; w)
    theta' = AdamW_step(theta, g, state)     (inner_step.py; differentiable in g; state is constant)
    L_down = mean_k CE( exp(psi) <I'_img, T'_class>, labels )   over tasks k, on theta' (downstream.py)

and the meta-gradient dL_down/d(log w). The scorer loss < log_softmax(q_phi(x_B)), sg(dL_down/dlog w) >
has exactly the phi-gradient of L_down(theta'(w(phi))) (it is SPEC.md's < softmax, sg(dL/dw) > written
with log-weights, which stay finite where a weight underflows to 0).

``meta_gradient`` follows SPEC.md 2 step 6: v = dL_down/dg through the optimizer step only; u = J_e v,
one Jacobian-vector product through the towers (e = image features, text features, logit scale
s = exp(t)); then dL_down/dlog w = d/dlog w < dL_up/de(e; w), u >, a second derivative through the loss
head only. Tests check it against back-propagation through g's own graph and finite differences.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.func import jvp

from flyt.models.losses import WeightedClipHead
from flyt.training.distributed import Comm
from flyt.training.downstream import TaskBatch, downstream_loss
from flyt.training.inner_step import AdamWConfig, adamw_step, detach_state

# Forward-mode AD (the jvp below) lazily imports torch's jvp decompositions, which call the deprecated
# torch.jit.script and print a FutureWarning mid-run (torch 2.14). Import them here, quietly, once.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    try:
        import torch._decomp.decompositions_for_jvp  # noqa: F401
    except ImportError:  # a torch without this module: nothing to silence
        pass


@dataclass
class MetaStep:
    grad_log_weights: torch.Tensor  # dL_down / d log w, shape (N,)
    upstream_loss: float
    downstream_loss: float
    task_losses: list[float]
    new_params: dict  # theta' (detached)
    new_state: dict  # optimizer state after the step (detached)
    grad_psi: torch.Tensor  # dL_down / d psi


def upstream_features(reference, params: dict, up_image: torch.Tensor, up_text: torch.Tensor):
    """e = (I, T, s): the batch's image and text features and the exponentiated logit scale, the
    arguments of the upstream loss (open_clip's convention: the loss takes exp of the log parameter)."""
    return (
        reference.encode_image(params, up_image),
        reference.encode_text(params, up_text),
        params["logit_scale"].exp(),
    )


def meta_gradient(
    reference,
    params: dict,
    state: dict,
    psi: torch.Tensor,
    up_image: torch.Tensor,
    up_text: torch.Tensor,
    log_weights: torch.Tensor,
    tasks: list[TaskBatch],
    opt: AdamWConfig,
    step_fn=adamw_step,
    comm=None,
    chunk: int | None = None,
) -> MetaStep:
    """The exact meta-gradient in SPEC.md's efficient form (no Hessian through the towers).

    Data-parallel (``comm`` from flyt.training.distributed): up_image/up_text and the task batches are
    this rank's chunks, log_weights is the whole global batch's; the result is the global one.
    ``chunk``: run the towers on the upstream batch ``chunk`` rows at a time (the backward pass for g
    recomputes each chunk's forward), so their activation memory is that of ``chunk`` rows.
    """
    comm = comm or Comm()
    n = len(log_weights)
    theta = {k: p.detach().requires_grad_(True) for k, p in params.items()}

    # e = (I, T, s) from the towers; L_up and dL_up/de from the loss head in closed form (the head
    # keeps S, P, Q for the second derivative below, so S = s I T^T is computed only once).
    if chunk is None:
        features = upstream_features(reference, theta, up_image, up_text)
    else:  # no graph here: each chunk's forward is redone for its backward pass below
        with torch.no_grad():
            parts = [upstream_features(reference, theta, up_image[s], up_text[s])
                     for s in _slices(len(up_image), chunk)]
        features = [torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), theta["logit_scale"].exp()]
    e = [comm.gather(features[0].detach(), n), comm.gather(features[1].detach(), n), features[2].detach()]
    head = WeightedClipHead(*e, log_weights)
    loss_up, grad_e = head.loss, head.feature_gradients()

    # g = grad_theta L_up = J_e^T dL_up/de: an ordinary backward pass through the towers and s = exp(t)
    # (each rank its own rows; the shared logit scale's share split evenly), summed over ranks.
    share = [comm.chunk(grad_e[0]), comm.chunk(grad_e[1]), grad_e[2] / comm.world]
    share = [x.detach() for x in share]
    if chunk is None:
        g = torch.autograd.grad(features, list(theta.values()), grad_outputs=share)
    else:
        g = _tower_backward_chunked(reference, theta, up_image, up_text, share, chunk)
    g = dict(zip(theta, comm.sum(list(g))))

    # v = dL_down/dg through theta' = AdamW_step(theta, g) (theta and the state are constants here).
    g_leaf = {k: x.detach().requires_grad_(True) for k, x in g.items()}
    psi_leaf = psi.detach().requires_grad_(True)
    theta_primal = {k: p.detach() for k, p in theta.items()}
    new_theta, new_state = step_fn(theta_primal, g_leaf, state, opt)
    new_theta = reference.clamp(new_theta)
    loss_down, per_task = downstream_loss(reference, new_theta, psi_leaf, tasks)
    # (allow_unused: the reference's own logit scale does not enter the downstream loss)
    *v, grad_psi = torch.autograd.grad(
        loss_down, [*g_leaf.values(), psi_leaf], allow_unused=True, materialize_grads=True
    )
    *v, grad_psi, loss_down, per_task = comm.sum([*v, grad_psi, loss_down.detach(), per_task.detach()])
    v = dict(zip(g_leaf, v))

    # u = J_e v: how the batch's features move along v (one forward-mode pass through the towers).
    u_parts = [
        jvp(lambda p, s=s: upstream_features(reference, p, up_image[s], up_text[s]), (theta_primal,), (v,))[1]
        for s in _slices(len(up_image), chunk)
    ]
    u = [torch.cat([x[0] for x in u_parts]), torch.cat([x[1] for x in u_parts]), u_parts[0][2]]
    u = [comm.gather(u[0], n), comm.gather(u[1], n), u[2]]

    # dL_down/dlog w = d/dlog w < dL_up/de(e; w), u >: second derivative through the loss head only.
    grad_log_w = head.weight_gradient(u)

    return MetaStep(
        grad_log_weights=grad_log_w.detach(),
        upstream_loss=float(loss_up.detach()),
        downstream_loss=float(loss_down.detach()),
        task_losses=[float(x) for x in per_task.detach()],
        new_params={k: p.detach() for k, p in new_theta.items()},
        new_state=detach_state(new_state),
        grad_psi=grad_psi.detach(),
    )


def _slices(n: int, chunk: int | None) -> list[slice]:
    if chunk is None or n == 0:
        return [slice(0, n)]
    return [slice(i, min(n, i + chunk)) for i in range(0, n, chunk)]


def _tower_backward_chunked(reference, theta, up_image, up_text, share, chunk):
    """J_e^T share, chunk by chunk (forward recomputed per chunk); gradients accumulated."""
    names = list(theta)
    total = [torch.zeros_like(p) for p in theta.values()]
    for s in _slices(len(up_image), chunk):
        image, text = reference.encode_image(theta, up_image[s]), reference.encode_text(theta, up_text[s])
        grads = torch.autograd.grad((image, text), list(theta.values()), grad_outputs=(share[0][s], share[1][s]),
                                    allow_unused=True, materialize_grads=True)
        for acc, gr in zip(total, grads):
            acc += gr
    # e's third part is s = exp(t): dL/dt = dL/ds * exp(t), as autograd's exp backward computes it
    total[names.index("logit_scale")] += share[2] * theta["logit_scale"].detach().exp()
    return total
