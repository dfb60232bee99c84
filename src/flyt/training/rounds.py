"""Iterative FLYT (``iterative.round_steps`` > 0): between rounds, re-score the pool, draw it with Soft Cap
Sampling, and continue the reference model on the draw, as the paper's future-work section proposes.

After every ``round_steps`` scorer steps (not after the run's last step) the loop calls ``transition``:

1. score every pool row with the current scorer, exactly as ``flyt score`` scores a scorer.pt saved at
   that moment (``LoadedScorer.score_arrays``: float32, row-block arithmetic, so a row's score does
   not depend on the other rows);
2. draw ``scs_total`` examples (default: the pool's rows) with SCS of penalty ``scs_penalty``, the draw
   ``flyt sample --method scs`` makes from those scores (``flyt.sampling.sample``), seeded by (seed, round);
3. continue the reference on the drawn multiset: ``reference_steps`` optimizer steps (the inner steps'
   optimizer config and state) of the plain CLIP loss on batches of ``upstream_batch`` rows, taken in
   order from shuffles of the multiset's copies (one shuffle is one epoch; its incomplete last batch is
   dropped), the log logit scale clamped after each step as after every inner step;
4. the scorer then trains on from there (same optimizer, same cosine schedule over ``steps``) against
   a reference that has seen the data the scorer picked.

Round r (1-based) is scorer steps ((r-1) round_steps, r round_steps]. The loop writes a checkpoint right
after each transition, so a run killed in round r resumes in round r; a transition is a function of the
scorer, the reference and (seed, r) only, so one redone after a kill gives the same bits. Checkpoints
count the transitions made (``rounds_done``): a run resumed with more ``steps`` from the checkpoint of
its last step makes the transition that step now owes before it goes on.
The pool must be held in memory (``pool_buffer``: auto with a pool under 2 GiB): a streamed pool is refused.
"""

from __future__ import annotations

import numpy as np
import torch

from flyt.errors import FlytError
from flyt.io.uids import uids_to_pairs
from flyt.models.checkpoint import LoadedScorer, scorer_payload
from flyt.models.losses import clip_loss
from flyt.sampling.draw import sample
from flyt.sampling.methods import SampleSpec
from flyt.sampling.order import uid_order
from flyt.sampling.sources import ArrayScores
from flyt.training.config import TrainConfig
from flyt.training.meta_gradient import upstream_features

ROUND_TAG = 0x49544552  # "ITER": the rounds' generators are (seed, ROUND_TAG, r), apart from the steps' (seed, step)


class Rounds:
    """The round boundaries of a run and the transition between rounds (module docstring)."""

    def __init__(self, cfg: TrainConfig, upstream):
        self.cfg, self.every = cfg, cfg.iterative.round_steps
        if self.every and upstream.streaming:
            raise FlytError("config key 'iterative.round_steps' needs the pool in memory, but this pool is streamed "
                            "(pool_buffer); iterative FLYT re-scores and re-draws the whole pool each round")
        self.pool = upstream.pool if self.every else None
        self._pairs = self._order = None
        self.done = 0  # transitions made (the checkpoint's "rounds_done")

    def ends_round(self, step_done: int) -> bool:
        """Whether scorer step ``step_done`` (1-based) closes a round that another round follows."""
        return bool(self.every) and step_done % self.every == 0 and step_done < self.cfg.steps

    def state(self) -> dict:
        """For the checkpoint (nothing when iterative FLYT is off, so those checkpoints are as before)."""
        return {"rounds_done": self.done} if self.every else {}

    def restore(self, ckpt: dict) -> None:
        self.done = int(ckpt.get("rounds_done", 0)) if self.every else 0

    def due(self, step_done: int) -> bool:
        """Whether the transition after ``step_done`` is still to be made: a resume with more ``steps``
        from the checkpoint of a run's last step, which closes a round now that the run goes on."""
        return self.ends_round(step_done) and self.done < step_done // self.every

    def transition(self, step_done: int, scorer, reference, params: dict, state: dict, opt, step_fn, dtype,
                   device) -> tuple[dict, dict, dict]:
        """Steps 1-3 of the module docstring after round ``step_done // round_steps``; returns the
        reference's (params, optimizer state) and a summary for the metrics."""
        cfg, it, pool = self.cfg, self.cfg.iterative, self.pool
        r = step_done // self.every
        rng = np.random.default_rng([cfg.seed, ROUND_TAG, r])
        scores = pool_scores(cfg, scorer, pool)
        pairs, order = self._uid_index()
        spec = SampleSpec("scs", total=it.scs_total or len(pairs), penalty=float(it.scs_penalty),
                          seed=int(rng.integers(2**63)))
        drawn = sample(spec, [ArrayScores(pairs, scores, name=f"pool scores after round {r}")])
        rows = order[np.searchsorted(pairs[order], drawn.pairs)]  # the drawn uids' pool rows (uid order)
        copies = np.repeat(rows, drawn.counts)
        losses = []
        for idx in _batches(copies, min(cfg.upstream_batch, len(copies)), it.reference_steps, rng):
            image = torch.as_tensor(pool.image[idx], dtype=dtype, device=device)
            text = torch.as_tensor(pool.text[idx], dtype=dtype, device=device)
            params, state, loss = reference_step(reference, params, state, image, text, opt, step_fn)
            losses.append(loss)
        self.done = r
        summary = {"round": r, "drawn": drawn.total, "unique": drawn.unique,
                   "reference_loss_first": losses[0], "reference_loss_last": losses[-1]}
        return params, state, summary

    def _uid_index(self):
        if self._pairs is None:
            self._pairs = uids_to_pairs(self.pool.uids, where=f"pool {self.cfg.pool}")
            self._order = uid_order(self._pairs)
        return self._pairs, self._order


def pool_scores(cfg: TrainConfig, scorer, pool) -> np.ndarray:
    """Every pool row's score by the scorer as it is now: what ``flyt score`` writes for it (float32 values)."""
    loaded = LoadedScorer(scorer_payload(cfg.mode, cfg.name, scorer), where="the scorer being trained")
    if cfg.mode == "flyt":
        return loaded.score_arrays(image=pool.image, text=pool.text).astype(np.float64)
    return loaded.score_arrays(scores=pool.scores).astype(np.float64)


def reference_step(reference, params: dict, state: dict, image, text, opt, step_fn) -> tuple[dict, dict, float]:
    """One optimizer step of the reference on the plain CLIP loss of a batch (uniform weights), clamped."""
    theta = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    loss = clip_loss(*upstream_features(reference, theta, image, text))
    g = dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))
    with torch.no_grad():
        new, new_state = step_fn({k: p.detach() for k, p in theta.items()}, g, state, opt)
        new = reference.clamp(new)
    return {k: p.detach() for k, p in new.items()}, new_state, float(loss.detach())


def _batches(copies: np.ndarray, batch: int, steps: int, rng: np.random.Generator):
    """``steps`` batches of ``batch`` entries of ``copies``, in order from successive shuffles of it."""
    order, pos = rng.permutation(len(copies)), 0
    for _ in range(steps):
        if pos + batch > len(order):  # the epoch is over: a new shuffle, the incomplete rest dropped
            order, pos = rng.permutation(len(copies)), 0
        yield copies[order[pos : pos + batch]]
        pos += batch
