"""K-step FLYT: the exact meta-gradient through K unrolled reference steps (issue 15).

One-step FLYT (``meta_gradient``) looks one optimizer step ahead. Here the reference takes K AdamW
steps on K successive upstream batches B_1..B_K, each weighted by the same scorer, and the downstream
loss is taken after the K-th. Forward, for j = 1..K with log-weights l_j = log_softmax(q_phi(x_{B_j})):

    e_j      = E(theta_{j-1}; B_j) = (I, T, s)                  the towers (s = exp(t))
    g_j      = J_E^T dL_up/de (e_j; l_j)                          (closed-form loss head)
    (theta_j, m_j, v_j) = clamp(AdamW(theta_{j-1}, g_j; m_{j-1}, v_{j-1}))
    L        = L_down(theta_K, psi)

The moments m, v now depend on the weights of earlier batches, and so does theta_{j-1}: all of them
carry gradient. Reverse mode (adjoints a_x = dL/dx; at K: a_theta = dL_down/dtheta_K, a_m = a_v = 0),
for j = K, K-1, ..., K-k+1:

    (a_theta^step, a_g, a_m, a_v) = VJP of the clamped AdamW step at (theta_{j-1}, g_j, m_{j-1}, v_{j-1})
    u_j      = J_E(theta_{j-1}) a_g                                     (forward mode through the towers)
    dL/dl_j  = d/dl < dL_up/de(e_j; l), u_j >                            (as in one-step FLYT)
    a_theta  = a_theta^step + d/dtheta < dL_up/de(E(theta); l_j), J_E(theta) a_g >
             = a_theta^step + VJP of theta -> (E(theta), J_E(theta) a_g) at cotangent (H u_j, dL_up/de)

since <a_g, g_j(theta)> = <J_E(theta) a_g, dL_up/de(E(theta))> and H = d^2 L_up/de^2 is symmetric.
H u is the loss head's Hessian along u, in closed form (``CurvedClipHead``); the step and tower VJPs
and the tower JVP are torch.func transforms of the plain functions (``inner_step``, the reference).

Checkpointing: the forward keeps only (theta_{j-1}, m_{j-1}, v_{j-1}) and g_j per inner step (four
parameter-sized tensors; the loss head's N x N matrices and the towers' activations are dropped),
and the reverse recomputes step j's features and head. Activation memory is that of one inner step
whatever K; K adds 4 x (parameters) per step (plus the K upstream batches the caller holds).

Truncation (``truncate = k``): the reverse runs over the last k steps only; theta_{K-k} and its
moments are constants, and the first K - k batches' log-weights get zero gradient. k = K is exact.

Data-parallel (``comm``): as ``meta_gradient``: features and their tangents gathered, each rank's
tower VJPs on its own rows (the shared logit scale's share split evenly), parameter adjoints summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jvp, vjp

from flyt.models.losses import WeightedClipHead
from flyt.training.distributed import Comm
from flyt.training.downstream import TaskBatch, downstream_loss
from flyt.training.inner_step import AdamWConfig, adamw_step, detach_state
from flyt.training.meta_gradient import upstream_features

MOMENTS = ("m", "v")  # the optimizer state's tensors (AdamW; SGD has none)


@dataclass
class InnerBatch:
    """One inner step's upstream batch: this rank's reference inputs and the global log-weights."""

    image: torch.Tensor
    text: torch.Tensor
    log_weights: torch.Tensor  # (N,) over the global batch, no graph


@dataclass
class UnrolledStep:
    grad_log_weights: list[torch.Tensor]  # dL_down / d log w_j, one (N,) per inner step (0 outside the window)
    upstream_losses: list[float]
    downstream_loss: float
    task_losses: list[float]
    params: list[dict]  # theta_1 .. theta_K (detached)
    states: list[dict]  # the optimizer state after each inner step (detached)
    grad_psi: torch.Tensor  # dL_down / d psi


class CurvedClipHead(WeightedClipHead):
    """``WeightedClipHead`` with the second derivatives one reverse inner step needs, along one
    direction u = (u_I, u_T, u_s) of the features, from one D = dS[u] = s (u_I T^T + I u_T^T) + (u_s/s) S:

        dP_ij = P_ij (D_ij - m_i),  dQ_ij = Q_ij (D_ij - n_j)     (m = rows of P o D, n = columns of Q o D)
        dG    = (w_i dP_ij + w_j dQ_ij) / 2,  M = dG + (u_s / s) G
        H u   = ( s (M T + G u_T),  s (M^T I + G^T u_I),  (<dG, S> + <G, D>) / s - u_s <G, S> / s^2 )

    (the derivative of dL/dI = s G T, dL/dT = s G^T I, dL/ds = <G, S> / s along u), together with
    the weight gradient d/dlog w <dL/de, u> (``weight_gradient``'s formula on the same D) and dL/de.
    """

    def second_order(self, u):
        """(d/dlog w <dL/de, u>, H u, dL/de) for the direction u."""
        u_I, u_T, u_s = u
        s, w, S, P, Q = self.s, self.w, self.S, self.P, self.Q
        D = torch.addmm((s * u_I) @ self.T.T, s * self.I, u_T.T)
        D.add_(S, alpha=float(u_s / s))
        d = D.diagonal()
        PD, QD = P * D, Q * D
        m, n = PD.sum(1), QD.sum(0)
        rows = w @ PD - (w * m) @ P  # sum_i w_i P_ik (D_ik - m_i)
        cols = QD @ w - Q @ (w * n)  # sum_j w_j Q_kj (D_kj - n_j)
        grad_log_w = (w * (m - d) + rows + w * (n - d) + cols) / 2
        # dG in place of PD and QD: P o (D - m 1^T) scaled by w_i / 2, plus Q o (D - 1 n^T) by w_j / 2
        dG = PD.addcmul_(P, m[:, None], value=-1).mul_((w / 2)[:, None])
        dG.add_(QD.addcmul_(Q, n[None, :], value=-1).mul_((w / 2)[None, :]))
        del QD
        G = P * (w / 2)[:, None]
        G.addcmul_(Q, (w / 2)[None, :])
        G.diagonal().sub_(w)
        GS = torch.vdot(G.reshape(-1), S.reshape(-1))
        GD = torch.vdot(G.reshape(-1), D.reshape(-1))
        dGS = torch.vdot(dG.reshape(-1), S.reshape(-1))
        del D, d  # (d, the diagonal, is a view that would keep D alive)
        M = dG.add_(G, alpha=float(u_s / s))
        d_txt, d_img = self.T.shape[1], self.I.shape[1]
        G_T = G @ torch.cat([self.T, u_T], dim=1)  # (G T | G u_T): one pass over G
        Gt_I = G.T @ torch.cat([self.I, u_I], dim=1)  # (G^T I | G^T u_I)
        grad_e = (s * G_T[:, :d_txt], s * Gt_I[:, :d_img], GS / s)
        hu = (s * (M @ self.T + G_T[:, d_txt:]), s * (M.T @ self.I + Gt_I[:, d_img:]),
              (dGS + GD) / s - u_s * GS / s**2)
        return grad_log_w, hu, grad_e


def unrolled_meta_gradient(
    reference,
    params: dict,
    state: dict,
    psi: torch.Tensor,
    batches: list[InnerBatch],
    tasks: list[TaskBatch],
    opt: AdamWConfig,
    step_fn=adamw_step,
    comm=None,
    truncate: int | None = None,
) -> UnrolledStep:
    """dL_down(theta_K) / d log w_j for every inner step j (module docstring), exact when ``truncate``
    is None or K. ``params`` and ``state`` are theta_0 and its optimizer state (constants)."""
    comm = comm or Comm()
    K = len(batches)
    window = K if truncate is None else truncate
    if not 1 <= window <= K:
        raise ValueError(f"truncate must be in [1, {K}], got {truncate}")

    # Forward: K steps, keeping (theta_{j-1}, state_{j-1}, g_j) only.
    thetas, states, grads, up_losses = [{k: p.detach() for k, p in params.items()}], [detach_state(state)], [], []
    for batch in batches:
        g, loss = _upstream_gradient(reference, thetas[-1], batch, comm)
        with torch.no_grad():
            new_theta, new_state = step_fn(thetas[-1], g, states[-1], opt)
            new_theta = reference.clamp(new_theta)
        thetas.append({k: p.detach() for k, p in new_theta.items()})
        states.append(detach_state(new_state))
        grads.append(g)
        up_losses.append(loss)

    # The downstream loss after the K-th step: a_theta = dL_down/dtheta_K and dL_down/dpsi.
    theta_K = {k: p.detach().requires_grad_(True) for k, p in thetas[-1].items()}
    psi_leaf = psi.detach().requires_grad_(True)
    loss_down, per_task = downstream_loss(reference, theta_K, psi_leaf, tasks)
    # (allow_unused: the reference's own logit scale does not enter the downstream loss)
    *a_theta, grad_psi = torch.autograd.grad(
        loss_down, [*theta_K.values(), psi_leaf], allow_unused=True, materialize_grads=True
    )
    *a_theta, grad_psi, loss_down, per_task = comm.sum([*a_theta, grad_psi, loss_down.detach(), per_task.detach()])
    a_theta = dict(zip(theta_K, a_theta))
    a_moments = {key: {k: torch.zeros_like(t) for k, t in states[-1][key].items()} for key in MOMENTS
                 if key in states[-1]}

    # Reverse over the last `window` steps, each step's forward recomputed.
    grad_log_w = [torch.zeros_like(b.log_weights) for b in batches]
    for j in reversed(range(K - window, K)):
        grad_log_w[j], a_theta, a_moments = _reverse_step(
            reference, thetas[j], states[j], grads[j], batches[j], a_theta, a_moments, opt, step_fn, comm
        )

    return UnrolledStep(
        grad_log_weights=[g.detach() for g in grad_log_w],
        upstream_losses=up_losses,
        downstream_loss=float(loss_down),
        task_losses=[float(x) for x in per_task],
        params=thetas[1:],
        states=states[1:],
        grad_psi=grad_psi.detach(),
    )


def _gathered(comm, features, n: int) -> list[torch.Tensor]:
    """This rank's (I, T, s) -> the global batch's (rows gathered; s is shared)."""
    return [comm.gather(features[0].detach(), n), comm.gather(features[1].detach(), n), features[2].detach()]


def _share(comm, e) -> list[torch.Tensor]:
    """A cotangent of the global (I, T, s) -> this rank's part (its rows; an even share of s's)."""
    return [comm.chunk(e[0]).detach(), comm.chunk(e[1]).detach(), (e[2] / comm.world).detach()]


def _upstream_gradient(reference, theta: dict, batch: InnerBatch, comm) -> tuple[dict, float]:
    """g = grad_theta L_up(theta; w) (no graph) and L_up, as ``meta_gradient`` computes them."""
    leaf = {k: p.detach().requires_grad_(True) for k, p in theta.items()}
    features = upstream_features(reference, leaf, batch.image, batch.text)
    head = WeightedClipHead(*_gathered(comm, features, len(batch.log_weights)), batch.log_weights)
    g = torch.autograd.grad(features, list(leaf.values()), grad_outputs=_share(comm, head.feature_gradients()))
    return dict(zip(leaf, comm.sum(list(g)))), float(head.loss)


def _reverse_step(reference, theta, state, g, batch, a_theta, a_moments, opt, step_fn, comm):
    """One inner step backwards: (dL/dlog w_j, a_theta_{j-1}, a_moments_{j-1}) from step j's adjoints."""
    moments = {key: state[key] for key in MOMENTS if key in state}

    def step(theta, g, moments):
        new_theta, new_state = step_fn(theta, g, {"step": state["step"], **moments}, opt)
        return reference.clamp(new_theta), {key: new_state[key] for key in moments}

    _, step_vjp = vjp(step, theta, g, moments)
    a_theta_step, a_g, a_moments = step_vjp((a_theta, a_moments))

    # (e, u) = (E(theta), J_E(theta) a_g) on this rank's rows, differentiable in theta for the last line
    def towers(p):
        return jvp(lambda q: upstream_features(reference, q, batch.image, batch.text), (p,), (a_g,))

    (e, u), towers_vjp = vjp(towers, theta)
    n = len(batch.log_weights)
    u = [comm.gather(u[0].detach(), n), comm.gather(u[1].detach(), n), u[2].detach()]
    head = CurvedClipHead(*_gathered(comm, e, n), batch.log_weights)
    grad_log_w, hu, grad_e = head.second_order(u)
    (a_theta_towers,) = towers_vjp((tuple(_share(comm, hu)), tuple(_share(comm, grad_e))))
    names = list(a_theta_towers)
    summed = dict(zip(names, comm.sum([a_theta_towers[k] for k in names])))
    a_theta = {k: (a_theta_step[k] + summed[k]).detach() for k in theta}
    a_moments = {key: {k: t.detach() for k, t in part.items()} for key, part in a_moments.items()}
    return grad_log_w.detach(), a_theta, a_moments
