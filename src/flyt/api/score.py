"""``flyt.score``: per-example scores for every pool shard, as a Python call."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flyt.api._config import make_config
from flyt.engines import ENGINES, session
from flyt.errors import FlytError
from flyt.io.datacomp import PAIRS
from flyt.io.pool import DEFAULT_PAIR
from flyt.pipeline.score import ScoreSummary, score_pool
from flyt.scorers.registry import ScorerOptions


@dataclass
class ScoreConfig:
    """What ``flyt score`` takes; every field is the CLI flag of the same name."""

    pool: str | Path  # flyt pool shards, or a DataComp metadata directory (parquet + npz)
    out: str | Path  # output score directory: one score shard per pool shard, same stem; extended if it exists
    scorers: list[str]  # baseline names (clip_score, negclip_loss, normsim_2, ...) and/or scorer.pt paths
    tasks: list[str] = field(default_factory=list)  # downstream task directories (normsim, classifier, image_based, contamination)
    scores: list[str] = field(default_factory=list)  # extra score directories joined by uid (M-FLYT inputs)
    workers: int = 1
    engine: str = "local"  # local | ray
    pair: str = DEFAULT_PAIR  # DataComp embedding pair (b32 | l14)
    batch_rows: int = 8192
    seed: int = 0  # seed of the pool samples (negclip_loss, classifier, image_based, dedup)
    options: ScorerOptions = field(default_factory=ScorerOptions)
    progress: bool | None = None  # None: a bar on a terminal only

    def validate(self) -> "ScoreConfig":
        if isinstance(self.scorers, str):
            self.scorers = [self.scorers]
        if not self.scorers:
            raise FlytError("option --scorer: give at least one scorer")
        for name in ("tasks", "scores"):
            value = getattr(self, name)
            setattr(self, name, [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value])
        if self.engine not in ENGINES:
            raise FlytError(f"option --engine: unknown engine {self.engine!r} (choose from {', '.join(ENGINES)})")
        if self.pair not in PAIRS:
            raise FlytError(f"option --pair: unknown embedding pair {self.pair!r} (choose from {', '.join(PAIRS)})")
        if isinstance(self.options, dict):
            self.options = make_config(ScorerOptions, self.options, {}, "options")
        return self


@dataclass
class ScoreResult(ScoreSummary):
    """What a scoring run did: shards scored/skipped/failed, rows, columns, where the scores are."""

    out: Path = Path(".")

    def raise_for_failures(self) -> None:
        if self.failures:
            first = self.failures[0]
            raise FlytError(
                f"{len(self.failures)} of {self.shards} shards failed (first: {first.stem}: {first.error}); "
                "the other shards were written; fix and re-run to finish"
            )


def score(config: ScoreConfig | dict | None = None, *, check: bool = True, **fields) -> ScoreResult:
    """Score every shard of a pool into ``out``, extending the score shards already there (new columns
    joined by uid; a column scored again replaces its old values). Re-running skips a shard whose stored
    fingerprint (pool shard files, each column's scorer settings) still matches.

    >>> import flyt
    >>> result = flyt.score(pool="data/pool", out="scores/clip", scorers=["clip_score"])  # doctest: +SKIP
    >>> result.columns, result.rows  # doctest: +SKIP
    (['clip_score'], 12800000)

    Failed shards do not stop the others; with ``check`` (default) they raise ``FlytError`` at the
    end, naming the first.
    """
    cfg = make_config(ScoreConfig, config, fields, "flyt.score")
    with session(cfg.engine):  # Ray, if used, starts once for every pass (dedup's several, the shards')
        summary = score_pool(
            cfg.pool, cfg.out, cfg.scorers, cfg.options, tasks=cfg.tasks, score_dirs=cfg.scores, workers=cfg.workers,
            engine=cfg.engine, pair=cfg.pair, batch_rows=cfg.batch_rows, seed=cfg.seed, progress=cfg.progress,
        )
    result = ScoreResult(**vars(summary), out=Path(cfg.out))
    if check:
        result.raise_for_failures()
    return result
