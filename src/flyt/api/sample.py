"""``flyt.sample``: scores in, the pretraining multiset (a DataComp subset) out, as a Python call."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flyt.api._config import make_config
from flyt.errors import FlytError
from flyt.io.atomic import exclusive_lock, remove_leftovers
from flyt.io.subsets import check_output_file, summary_path, write_subset
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
        if self.column == "uid":
            raise FlytError("--column uid is the key column, not a score: name a numeric score column")
        if self.out is not None and Path(self.out).suffix != ".npy":
            raise FlytError(f"--out must name a .npy file, got {self.out}")
        if self.out is not None:
            check_output_file(self.out, "--out")
            check_output_file(summary_path(self.out), "--out's summary")
        if self.counts_parquet is not None and self.out is None:
            raise FlytError("--counts-parquet needs --out")
        if self.counts_parquet is not None:
            check_output_file(self.counts_parquet, "--counts-parquet")
        if self.counts_parquet is not None:
            _check_counts_parquet(Path(self.counts_parquet), Path(self.out), Path(self.scores))
        return self


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _check_counts_parquet(counts: Path, out: Path, scores: Path) -> None:
    """--counts-parquet must be a file of its own: not the subset or its summary, and not in the --scores
    directory (it would overwrite an input shard there, or become one for the next run)."""
    for other in (out, summary_path(out)):
        if _same(counts, other):
            raise FlytError(f"--counts-parquet {counts} is the same file as the output {other}; choose another path")
    if scores.is_dir() and _same(counts.parent, scores):
        raise FlytError(
            f"--counts-parquet {counts} is in the --scores directory {scores}: it would overwrite an input shard "
            "(or become one); choose another path"
        )


def _take_over(out: Path, counts_parquet, held: contextlib.ExitStack) -> None:
    """Lock ``out`` for this run (a second run writing it is refused) and remove the temporaries an
    earlier, killed run of it left beside the subset, its summary and the counts parquet."""
    if not out.parent.is_dir():  # nothing can be left there yet; the writer creates the directory
        return
    held.enter_context(exclusive_lock(out.with_name(f".{out.name}.lock"), f"subset {out}"))
    for path in (out, summary_path(out), counts_parquet):
        if path is not None:
            remove_leftovers(path)


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
    out = Path(cfg.out) if cfg.out is not None else None
    with contextlib.ExitStack() as held:
        if out is not None:
            _take_over(out, cfg.counts_parquet, held)
        selection = draw(spec, score_sources(cfg.scores, cfg.column), engine=cfg.engine, workers=cfg.workers)
        summary = summarize(spec, selection, column=cfg.column, scores=str(cfg.scores))
        if out is not None:
            write_subset(out, selection.pairs, selection.counts, summary, cfg.counts_parquet)
    return SampleResult(selection.pairs, selection.counts, summary, out)
