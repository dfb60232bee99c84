"""Per-example scores of pool rows: baselines (SPEC.md 5) and trained FLYT/M-FLYT scorers."""

from flyt.io.pool import Batch
from flyt.scorers.base import Scorer
from flyt.scorers.registry import SCORERS, ScorerOptions, make_scorer, make_scorers

__all__ = ["Batch", "Scorer", "SCORERS", "ScorerOptions", "make_scorer", "make_scorers"]
