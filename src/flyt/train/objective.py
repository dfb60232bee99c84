"""The FLYT objective (SPEC.md section 2), written out.

One step, for upstream pool batch B with log-weights log w = log_softmax(q_phi(x_B)):

    S_ij   = exp(t) <I_i, T_j>
    L_img  = - sum_i w_i [ S_ii - logsumexp_j (S_ij + log w_j) ]           (L_txt: S transposed)
    L_up   = (L_img + L_txt) / 2
    g      = grad_theta L_up(theta; w)
    theta' = AdamW_step(theta, g, state)                 (differentiable in g; state is constant)
    L_down = mean_k CE( exp(psi) <I'_img, T'_class>, labels )   over tasks k, on theta'

and the meta-gradient dL_down/d(log w). The scorer loss < log_softmax(q_phi(x_B)), sg(dL_down/dlog w) >
has exactly the phi-gradient of L_down(theta'(w(phi))) (it is SPEC.md's < softmax, sg(dL/dw) > written
with log-weights, which stay finite where a weight underflows to 0).

Two ways to get dL_down/dlog w, equal up to rounding (tests check both against finite differences):
- ``meta_gradient_double_backward``: back-propagate through the whole graph, including g's graph.
- ``meta_gradient``: SPEC.md 2 step 6. v = dL_down/dg through the optimizer step only; u = J_e v, one
  Jacobian-vector product through the towers (e = image features, text features, logit scale); then
  dL_down/dlog w = d/dlog w < dL_up/de(e; w), u >, a second derivative through the loss head only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import jvp

from flyt.train.distributed import Comm

# Forward-mode AD (the jvp below) lazily imports torch's jvp decompositions, which call the deprecated
# torch.jit.script and print a FutureWarning mid-run (torch 2.14). Import them here, quietly, once.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    try:
        import torch._decomp.decompositions_for_jvp  # noqa: F401
    except ImportError:  # a torch without this module: nothing to silence
        pass


# --------------------------------------------------------------------------------------------
# Losses


def weighted_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    log_weights: torch.Tensor,
) -> torch.Tensor:
    """Contrastive loss of the distribution w = exp(log_weights) over the batch.

    Weights sit on anchors and on negatives. Weights uniform on a subset M give the CLIP loss of M
    alone minus log|M|; an example of weight 0 (log weight -inf) has no influence at all.
    """
    S = (logit_scale.exp() * image_features) @ text_features.T  # scale the (N, d) side, not (N, N)
    w = log_weights.exp()
    positives = S.diagonal()
    log_norm_img = torch.logsumexp(S + log_weights[None, :], dim=1)  # over texts j, per image i
    log_norm_txt = torch.logsumexp(S.T + log_weights[None, :], dim=1)  # over images j, per text i
    loss_img = -(w * (positives - log_norm_img)).sum()
    loss_txt = -(w * (positives - log_norm_txt)).sum()
    return (loss_img + loss_txt) / 2


class WeightedClipHead:
    """``weighted_clip_loss`` as a head over the features e = (I, T, t), with the two derivatives the
    meta-gradient needs in closed form (no autograd graph over the N x N similarity matrix):

        S = s I T^T (s = e^t);  P_ij = w_j e^{S_ij} / sum_l w_l e^{S_il}  (row softmax over texts j)
                                Q_ij = w_i e^{S_ij} / sum_l w_l e^{S_lj}  (column softmax over images i)
        G = dL/dS = (w_i P_ij + w_j Q_ij) / 2 - w_i delta_ij
        dL/dI = s G T,   dL/dT = s G^T I,   dL/dt = <G, S>

    and, for a direction u = (u_I, u_T, u_t) of the features, D = dS[u] = s (u_I T^T + I u_T^T) + u_t S,
    h(log w) = <dL/de, u> = <G, D>, whose gradient with m_i = sum_j P_ij D_ij, n_j = sum_i Q_ij D_ij is

        dh/dlog w_k = ( w_k (m_k - D_kk) + sum_i w_i P_ik (D_ik - m_i)
                      + w_k (n_k - D_kk) + sum_j w_j Q_kj (D_kj - n_j) ) / 2.

    Tests check both against autograd and finite differences.
    """

    def __init__(self, image_features, text_features, logit_scale, log_weights):
        self.I, self.T, self.t = image_features.detach(), text_features.detach(), logit_scale.detach()
        self.log_w = log_weights.detach()
        self.w = self.log_w.exp()
        self.s = self.t.exp()
        self.S = (self.s * self.I) @ self.T.T
        # (N x N work is memory-bound on a CPU: build each matrix in place, reduce with mat-vecs)
        self.P = self.S + self.log_w[None, :]
        log_norm_img = torch.logsumexp(self.P, dim=1)  # r_i
        self.P.sub_(log_norm_img[:, None]).exp_()
        self.Q = self.S + self.log_w[:, None]
        log_norm_txt = torch.logsumexp(self.Q, dim=0)  # c_j
        self.Q.sub_(log_norm_txt[None, :]).exp_()
        positives = self.S.diagonal()
        self.loss = -(self.w * (positives - log_norm_img)).sum() / 2 - (self.w * (positives - log_norm_txt)).sum() / 2

    def feature_gradients(self):
        """(dL/dI, dL/dT, dL/dt)."""
        G = self.P * (self.w[:, None] / 2)
        G.addcmul_(self.Q, self.w[None, :] / 2)
        G.diagonal().sub_(self.w)
        return (self.s * (G @ self.T), self.s * (G.T @ self.I), torch.vdot(G.reshape(-1), self.S.reshape(-1)))

    def weight_gradient(self, u) -> torch.Tensor:
        """d/dlog w of < dL/de(e; w), u > for a fixed direction u of the features."""
        u_I, u_T, u_t = u
        D = torch.addmm((self.s * u_I) @ self.T.T, self.s * self.I, u_T.T)
        D.add_(self.S, alpha=float(u_t))
        d = D.diagonal()
        PD, QD = self.P * D, self.Q * D
        m, n = PD.sum(1), QD.sum(0)
        rows = self.w @ PD - (self.w * m) @ self.P  # sum_i w_i P_ik (D_ik - m_i)
        cols = QD @ self.w - self.Q @ (self.w * n)  # sum_j w_j Q_kj (D_kj - n_j)
        return (self.w * (m - d) + rows + self.w * (n - d) + cols) / 2


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The standard (open_clip) CLIP loss: mean of image->text and text->image cross-entropies."""
    logits = logit_scale.exp() * image_features @ text_features.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@dataclass
class TaskBatch:
    """One downstream task's batch: images, labels, and one prompt embedding per class."""

    images: torch.Tensor  # (n, d_img) frozen image embeddings (or the reference's raw image inputs)
    labels: torch.Tensor  # (n,) int64
    class_prompts: torch.Tensor  # (C, d_txt) frozen text embedding of one random template per class
    size: int | None = None  # data-parallel: the task's global batch size (this is one rank's chunk)


def downstream_loss(reference, params: dict, psi: torch.Tensor, tasks: list[TaskBatch]):
    """Mean over tasks of the zero-shot cross-entropy of the (updated) reference model.

    Returns (loss, per-task losses). psi is the learnable downstream log logit scale.
    """
    per_task = []
    for task in tasks:
        image = reference.encode_image(params, task.images)
        classes = reference.encode_text(params, task.class_prompts)
        logits = (psi.exp() * image) @ classes.T
        if task.size is None:
            per_task.append(F.cross_entropy(logits, task.labels))
        else:  # this rank's share of the global mean; summed over ranks it is the mean
            per_task.append(F.cross_entropy(logits, task.labels, reduction="sum") / task.size)
    per_task = torch.stack(per_task)
    return per_task.mean(), per_task


# --------------------------------------------------------------------------------------------
# The reference model's optimizer step, differentiable in the gradient


@dataclass
class AdamWConfig:
    lr: float = 5e-5
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.2  # on >= 2-D weights only


def adamw_init(params: dict) -> dict:
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    return {"step": 0, "m": zeros, "v": {k: torch.zeros_like(v) for k, v in params.items()}}


def adamw_step(params: dict, grads: dict, state: dict, cfg: AdamWConfig):
    """theta' = AdamW(theta, g) as in torch.optim.AdamW, differentiable with respect to g.

        m' = b1 m + (1 - b1) g             v' = b2 v + (1 - b2) g^2
        theta' = theta (1 - lr wd) - lr (m' / (1 - b1^t)) / (sqrt(v' / (1 - b2^t)) + eps)

    The moments of earlier steps (state) are constants. Returns (theta', state').
    """
    t = state["step"] + 1
    new_params, new_m, new_v = {}, {}, {}
    for k, theta in params.items():
        g = grads[k]
        m = cfg.beta1 * state["m"][k] + (1 - cfg.beta1) * g
        v = cfg.beta2 * state["v"][k] + (1 - cfg.beta2) * g * g
        m_hat = m / (1 - cfg.beta1**t)
        v_hat = v / (1 - cfg.beta2**t)
        # clamp_min keeps d sqrt/dv finite where v is exactly 0 (changes the value by < 1e-19)
        update = m_hat / (v_hat.clamp_min(torch.finfo(v_hat.dtype).tiny).sqrt() + cfg.eps)
        decay = cfg.weight_decay if theta.ndim >= 2 else 0.0
        new_params[k] = theta * (1 - cfg.lr * decay) - cfg.lr * update
        new_m[k], new_v[k] = m, v
    return new_params, {"step": t, "m": new_m, "v": new_v}


def sgd_step(params: dict, grads: dict, state: dict, cfg: AdamWConfig):
    """theta' = theta - lr g (an alternative reference optimizer, linear in g)."""
    return {k: p - cfg.lr * grads[k] for k, p in params.items()}, {**state, "step": state["step"] + 1}


# --------------------------------------------------------------------------------------------
# The meta-gradient


@dataclass
class MetaStep:
    grad_log_weights: torch.Tensor  # dL_down / d log w, shape (N,)
    upstream_loss: float
    downstream_loss: float
    task_losses: list[float]
    new_params: dict  # theta' (detached)
    new_state: dict  # optimizer state after the step (detached)
    grad_psi: torch.Tensor  # dL_down / d psi


def _upstream_features(reference, params, up_image, up_text):
    return (
        reference.encode_image(params, up_image),
        reference.encode_text(params, up_text),
        params["logit_scale"],
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

    Data-parallel (``comm`` from flyt.train.distributed): up_image/up_text and the task batches are
    this rank's chunks, log_weights is the whole global batch's; the result is the global one.
    ``chunk``: run the towers on the upstream batch ``chunk`` rows at a time (the backward pass for g
    recomputes each chunk's forward), so their activation memory is that of ``chunk`` rows.
    """
    comm = comm or Comm()
    n = len(log_weights)
    theta = {k: p.detach().requires_grad_(True) for k, p in params.items()}

    # e = (I, T, t) from the towers; L_up and dL_up/de from the loss head in closed form (the head
    # keeps S, P, Q for the second derivative below, so S = exp(t) I T^T is computed only once).
    if chunk is None:
        features = _upstream_features(reference, theta, up_image, up_text)
    else:  # no graph here: each chunk's forward is redone for its backward pass below
        with torch.no_grad():
            parts = [_upstream_features(reference, theta, up_image[s], up_text[s]) for s in _slices(len(up_image), chunk)]
        features = [torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), theta["logit_scale"]]
    e = [comm.gather(features[0].detach(), n), comm.gather(features[1].detach(), n), features[2].detach()]
    head = WeightedClipHead(*e, log_weights)
    loss_up, grad_e = head.loss, head.feature_gradients()

    # g = grad_theta L_up = J_e^T dL_up/de: an ordinary backward pass through the towers (each rank
    # its own rows; the shared logit scale's share split evenly), summed over ranks.
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
        jvp(lambda p: _upstream_features(reference, p, up_image[s], up_text[s]), (theta_primal,), (v,))[1]
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
        new_state=_detach_state(new_state),
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
    total[names.index("logit_scale")] += share[2]  # e's third part is the logit scale itself
    return total


def meta_gradient_double_backward(
    reference, params, state, psi, up_image, up_text, log_weights, tasks, opt, step_fn=adamw_step
) -> torch.Tensor:
    """Reference implementation: dL_down/dlog w by back-propagating through g's own graph."""
    theta = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    log_w = log_weights.detach().clone().requires_grad_(True)
    loss_up = weighted_clip_loss(*_upstream_features(reference, theta, up_image, up_text), log_w)
    g = dict(zip(theta, torch.autograd.grad(loss_up, list(theta.values()), create_graph=True)))
    new_theta, _ = step_fn(theta, g, state, opt)
    loss_down, _ = downstream_loss(reference, reference.clamp(new_theta), psi.detach(), tasks)
    (grad,) = torch.autograd.grad(loss_down, log_w)
    return grad.detach()


def downstream_after_step(reference, params, state, psi, up_image, up_text, log_weights, tasks, opt, step_fn=adamw_step):
    """L_down(theta'(w)) as a plain function of the log-weights (for finite differences)."""
    theta = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    with torch.enable_grad():
        loss_up = weighted_clip_loss(*_upstream_features(reference, theta, up_image, up_text), log_weights)
        g = dict(zip(theta, torch.autograd.grad(loss_up, list(theta.values()))))
    new_theta, _ = step_fn({k: p.detach() for k, p in theta.items()}, g, state, opt)
    loss, _ = downstream_loss(reference, reference.clamp(new_theta), psi, tasks)
    return loss.detach()


def _detach_state(state: dict) -> dict:
    out = {"step": state["step"]}
    for key in ("m", "v"):
        if key in state:
            out[key] = {k: t.detach() for k, t in state[key].items()}
    return out
