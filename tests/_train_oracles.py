"""Test-only oracles for the FLYT meta-gradient: the slow, obviously-correct ways to the same numbers.

- ``meta_gradient_double_backward``: dL_down/dlog w by back-propagating through the whole graph,
  including g's own graph (a Hessian-vector product through the towers).
- ``downstream_after_step``: L_down(theta'(w)) as a plain function of the log-weights (for finite
  differences).
"""

from __future__ import annotations

import torch

from flyt.models.losses import weighted_clip_loss
from flyt.training.downstream import downstream_loss
from flyt.training.inner_step import adamw_step
from flyt.training.meta_gradient import upstream_features


def meta_gradient_double_backward(
    reference, params, state, psi, up_image, up_text, log_weights, tasks, opt, step_fn=adamw_step
) -> torch.Tensor:
    """Reference implementation: dL_down/dlog w by back-propagating through g's own graph."""
    theta = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    log_w = log_weights.detach().clone().requires_grad_(True)
    loss_up = weighted_clip_loss(*upstream_features(reference, theta, up_image, up_text), log_w)
    g = dict(zip(theta, torch.autograd.grad(loss_up, list(theta.values()), create_graph=True)))
    new_theta, _ = step_fn(theta, g, state, opt)
    loss_down, _ = downstream_loss(reference, reference.clamp(new_theta), psi.detach(), tasks)
    (grad,) = torch.autograd.grad(loss_down, log_w)
    return grad.detach()


def downstream_after_step(
    reference, params, state, psi, up_image, up_text, log_weights, tasks, opt, step_fn=adamw_step
) -> torch.Tensor:
    """L_down(theta'(w)) as a plain function of the log-weights (for finite differences)."""
    theta = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    with torch.enable_grad():
        loss_up = weighted_clip_loss(*upstream_features(reference, theta, up_image, up_text), log_weights)
        g = dict(zip(theta, torch.autograd.grad(loss_up, list(theta.values()))))
    new_theta, _ = step_fn({k: p.detach() for k, p in theta.items()}, g, state, opt)
    loss, _ = downstream_loss(reference, reference.clamp(new_theta), psi, tasks)
    return loss.detach()
