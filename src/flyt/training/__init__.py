"""FLYT / M-FLYT training (SPEC.md sections 2 and 3).

- ``config``: ``TrainConfig`` (+ ``ReferenceConfig``, ``ScorerHeadConfig``), built from YAML and overrides.
- ``loop``: ``train(cfg)``, the training loop; writes the run directory and scorer.pt.
- ``upstream``: each step's upstream batch: the pool in memory, or streamed through a bounded buffer (``pool_buffer``).
- ``meta_gradient``: the exact meta-gradient dL_down/dlog w of one reference step.
- ``unrolled``, ``kstep``: K-step FLYT (``inner_steps``), the exact meta-gradient through K reference steps.
- ``rounds``: iterative FLYT (``iterative.round_steps``): re-score, SCS-draw, continue the reference between rounds.
- ``inner_step``: the reference's optimizer step, differentiable in its gradient (AdamW, SGD).
- ``downstream``: the downstream tasks' batches and zero-shot loss.
- ``schedule``: the warm-up + cosine learning-rate schedule.
- ``distributed``, ``raw_inputs``: data-parallel collectives; raw images/captions for an open_clip reference.

The upstream losses live in ``flyt.models.losses``.
"""
