"""``flyt.sample``: scores in, the pretraining multiset (a DataComp subset) out, as a Python call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flyt.api._config import make_config
from flyt.errors import FlytError
from flyt.io.subsets import write_subset
from flyt.sampling.draw import sample as draw
from flyt.sampling.draw import summarize
from flyt.sampling.methods import SampleSpec
from flyt.sampling.sources import score_sources


@dataclass
class SampleConfig:
    """What ``flyt sample`` takes; every field is the CLI flag of the same name."""

    scores: str | Path  # directory of score (or pool) shards with 'uid' and ``column``
    column: str  # score column to sample by (logits: higher = better)
    method: str  # scs | hcs | topk | threshold
    total: int | None = None  # scs/hcs: draws (samples seen); topk/threshold: samples-seen budget
    penalty: float | None = None  # scs: logit drop per draw (paper: 0.15, 0.25)
    cap: int | None = None  # hcs: max copies per example (an extra cap for scs)
    fraction: float | None = None  # topk: keep the best fraction
    count: int | None = None  # topk: keep the best count
    threshold: float | None = None  # threshold: keep score >= threshold
    temperature: float = 1.0  # scores are divided by it
    seed: int = 0
    batch: int | None = None  # scs/hcs: the authors' batched procedure instead (in memory)
    budget: int | None = None  # samples-seen budget the summary's repeats refer to
    out: str | Path | None = None  # SUBSET.npy (+ SUBSET.json); None: return the draw only
    counts_parquet: str | Path | None = None  # also write a uid,count parquet
    engine: str = "local"
    workers: int = 1

    def spec(self) -> SampleSpec:
        return SampleSpec(
            method=self.method, total=self.total, penalty=self.penalty, cap=self.cap, temperature=self.temperature,
            fraction=self.fraction, count=self.count, threshold=self.threshold, batch=self.batch,
            budget=self.budget, seed=self.seed,
        )

    def validate(self) -> "SampleConfig":
        self.spec().validate()
        if self.out is not None and Path(self.out).suffix != ".npy":
            raise FlytError(f"--out must name a .npy file, got {self.out}")
        if self.counts_parquet is not None and self.out is None:
            raise FlytError("--counts-parquet needs --out")
        return self


@dataclass
class SampleResult:
    """The drawn multiset: unique uid pairs (sorted, DataComp dtype) with their counts, and its summary."""

    pairs: np.ndarray
    counts: np.ndarray
    summary: dict
    out: Path | None = None

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def line(self) -> str:
        s = self.summary
        return (f"{s['total']} draws of {s['unique']} unique uids (max {s['max_count']} copies) "
                f"from {s['pool_rows']} rows -> {self.out}")


def sample(config: SampleConfig | dict | None = None, **fields) -> SampleResult:
    """Draw a subset from score shards; results depend only on the scores, the options and the seed.

    >>> import flyt
    >>> r = flyt.sample(scores="scores/flyt", column="flyt", method="scs", penalty=0.15,
    ...                 total=128_000_000, out="subset.npy")  # doctest: +SKIP
    >>> r.summary["unique"], r.total  # doctest: +SKIP
    """
    cfg = make_config(SampleConfig, config, fields, "flyt.sampling")
    spec = cfg.spec()
    selection = draw(spec, score_sources(cfg.scores, cfg.column), engine=cfg.engine, workers=cfg.workers)
    summary = summarize(spec, selection, column=cfg.column, scores=str(cfg.scores))
    out = Path(cfg.out) if cfg.out is not None else None
    if out is not None:
        write_subset(out, selection.pairs, selection.counts, summary, cfg.counts_parquet)
    return SampleResult(selection.pairs, selection.counts, summary, out)
