"""One scorer step of K-step FLYT (``inner_steps`` K > 1), for the training loop.

The step draws K upstream batches (the loop draws them, in order, from the step's generator, then the
task batches), scores each with the same scorer phi, and asks ``unrolled_meta_gradient`` for
dL_down(theta_K)/dlog w_j of every batch. The scorer's loss is the sum over the batches,

    sum_j < log_softmax(q_phi(x_{B_j})), sg(dL_down/dlog w_j) >,

whose phi-gradient is dL_down(theta_K(w_1(phi), ..., w_K(phi)))/dphi. The scores are computed without
a graph first and recomputed batch by batch for the backward pass (the same operations on the same
inputs, so the same values), so the scorer's activations are held for one batch at a time, not K.

After the scorer step the reference moves to theta_K (``reference_advance`` null or K) or theta_1
(``reference_advance: 1``); with ``update_reference: false`` it stays where it was.
K = 1 never comes here: the loop keeps the one-step path (``meta_gradient``) as it was, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flyt.training.config import TrainConfig
from flyt.training.unrolled import InnerBatch, unrolled_meta_gradient


@dataclass
class KStep:
    grad_log_weights: torch.Tensor  # every batch's dL_down/dlog w, concatenated (for the finiteness check)
    upstream_loss: float  # mean over the K batches
    downstream_loss: float  # after the K-th inner step
    task_losses: list[float]
    new_params: dict  # where the reference moves (reference_advance)
    new_state: dict
    grad_psi: torch.Tensor
    log_weights: torch.Tensor  # the first batch's log-weights (no graph; the metrics' weight entropy)
    _backward: list = field(default_factory=list, repr=False)

    def backward(self) -> None:
        """Accumulate d/dphi sum_j < log w_j(phi), sg(dL_down/dlog w_j) > into the scorer's .grad."""
        for fn in self._backward:
            fn()


def kstep_meta(cfg: TrainConfig, scorer, draws, task_batches, reference, params, ref_state, psi, ref_opt, step_fn,
               comm, dtype, device) -> KStep:
    """The K-step meta-gradient of one scorer step; ``draws``: the K global upstream batches
    (flyt.training.upstream.UpstreamBatch), each rank keeping its contiguous chunk."""
    n = len(draws[0].uids)
    inputs = [_inputs(up, comm, dtype, device) for up in draws]

    def log_weights(up, image, text):
        scores = scorer(image, text) if cfg.mode == "flyt" else scorer(torch.as_tensor(comm.chunk(up.scores), device=device))
        return torch.log_softmax(comm.gather_with_grad(scores, n), dim=0)

    with torch.no_grad():
        log_ws = [log_weights(up, *x) for up, x in zip(draws, inputs)]
    window = cfg.truncate or cfg.inner_steps
    meta = unrolled_meta_gradient(
        reference, params, ref_state, psi, [InnerBatch(*x, lw) for x, lw in zip(inputs, log_ws)], task_batches,
        ref_opt, step_fn, comm=comm, truncate=window,
    )
    advance = cfg.reference_advance or cfg.inner_steps
    first = cfg.inner_steps - window  # batches before the window get no gradient: skip their backward

    def term(j):
        def run():
            (log_weights(draws[j], *inputs[j]) * meta.grad_log_weights[j]).sum().backward()
        return run

    return KStep(
        grad_log_weights=torch.cat(meta.grad_log_weights),
        upstream_loss=sum(meta.upstream_losses) / len(meta.upstream_losses),
        downstream_loss=meta.downstream_loss,
        task_losses=meta.task_losses,
        new_params=meta.params[advance - 1],
        new_state=meta.states[advance - 1],
        grad_psi=meta.grad_psi,
        log_weights=log_ws[0],
        _backward=[term(j) for j in range(first, cfg.inner_steps)],
    )


def _inputs(up, comm, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's frozen embeddings of a batch: the scorer's (mode flyt) and the reference's input."""
    return (torch.as_tensor(comm.chunk(up.image), dtype=dtype, device=device),
            torch.as_tensor(comm.chunk(up.text), dtype=dtype, device=device))
