"""The reference model's optimizer step, differentiable in the gradient: theta' = step(theta, g, state).

The meta-gradient differentiates the downstream loss at theta' with respect to g, so the step is
written out functionally on a params dict (torch.optim's in-place steps are not differentiable).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AdamWConfig:
    lr: float = 5e-5
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.2  # on >= 2-D weights only


def adamw_init(params: dict) -> dict:
    """A fresh optimizer state: step 0 and zero moments."""
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


def detach_state(state: dict) -> dict:
    """The optimizer state without its autograd graph (what the next step starts from)."""
    out = {"step": state["step"]}
    for key in ("m", "v"):
        if key in state:
            out[key] = {k: t.detach() for k, t in state[key].items()}
    return out
