"""``flyt.sample``: scores in, the pretraining multiset (a DataComp subset) out, as a Python call."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flyt.api._config import make_config
from flyt.engines import get_map_shards, session
from flyt.errors import FlytError
from flyt.io.atomic import check_writable_dir, exclusive_lock, remove_leftovers
from flyt.io.subsets import check_output_file, summary_path, write_subset_chunks
from flyt.sampling.draw import sample as draw
from flyt.sampling.draw import summarize
from flyt.sampling.exclude import exclude, parse_rule
from flyt.sampling.group_keys import parse_groups
from flyt.sampling.groups import check_method as check_group_method
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
    fraction_rule: str | None = None  # topk --fraction: datacomp (default, DataComp's baselines.py) or exact
    threshold: float | None = None  # threshold: keep score >= threshold
    temperature: float = 1.0  # scores are divided by it
    seed: int = 0
    batch: int | None = None  # scs/hcs: the authors' batched procedure instead (in memory)
    budget: int | None = None  # samples-seen budget the summary's repeats refer to
    out: str | Path | None = None  # SUBSET.npy (+ SUBSET.json); None: return the draw only
    counts_parquet: str | Path | None = None  # also write a uid,count parquet
    engine: str = "local"
    workers: int = 1
    max_memory: str | int | None = None  # bytes (or "8G", "512M") the draw may hold before spilling beside --out
    part_rows: int | None = None  # write --out as a directory of sorted .npy parts of this many rows + manifest.json
    spill_dir: str | Path | None = None  # an existing directory for a spilling draw's files (default: beside --out)
    groups: str | None = None  # scs/hcs: "SCORES_DIR:COLUMN", count copies (penalty, cap) per group (flyt.sampling.groups)
    exclude: list[str] | str | None = None  # rules "COL>X" (> >= < <= == !=): rows matching any are dropped first
    exclude_scores: list[str] | str | None = None  # directories holding --exclude columns not in --scores (joined by uid)

    def spec(self) -> SampleSpec:
        return SampleSpec(
            method=self.method, total=self.total, penalty=self.penalty, cap=self.cap, temperature=self.temperature,
            fraction=self.fraction, fraction_rule=self.fraction_rule, count=self.count, threshold=self.threshold, batch=self.batch,
            budget=self.budget, seed=self.seed,
        )

    def validate(self) -> "SampleConfig":
        self.spec().validate()
        for name in ("exclude", "exclude_scores"):  # one value or a list; None: none
            value = getattr(self, name)
            setattr(self, name, [] if value is None else [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value])
        for rule in self.exclude:
            parse_rule(rule)
        if self.exclude_scores and not self.exclude:
            raise FlytError("--exclude-scores needs --exclude rules")
        if self.groups is not None:
            check_group_method(self.spec())
            parse_groups(self.groups)
        parse_size(self.max_memory, "--max-memory")
        if self.spill_dir is not None:
            check_spill_dir(Path(self.spill_dir))
        if self.column == "uid":
            raise FlytError("--column uid is the key column, not a score: name a numeric score column")
        if self.part_rows is not None:
            if isinstance(self.part_rows, bool) or not isinstance(self.part_rows, int) or self.part_rows < 1:
                raise FlytError(f"--part-rows must be a positive integer, got {self.part_rows!r}")
            if self.out is None or Path(self.out).suffix in (".npy", ".json"):
                raise FlytError(f"--part-rows needs --out naming a directory for the parts (not a .npy/.json file), got {self.out}")
            check_output_file(Path(self.out) / "manifest.json", "--out")
        elif self.out is not None and Path(self.out).suffix != ".npy":
            raise FlytError(f"--out must name a .npy file, got {self.out}")
        elif self.out is not None:
            check_output_file(self.out, "--out")
        if self.out is not None:
            check_output_file(summary_path(self.out), "--out's summary")
        if self.counts_parquet is not None and self.out is None:
            raise FlytError("--counts-parquet needs --out")
        if self.counts_parquet is not None:
            check_output_file(self.counts_parquet, "--counts-parquet")
        if self.counts_parquet is not None:
            _check_counts_parquet(Path(self.counts_parquet), Path(self.out), Path(self.scores))
        return self


def parse_size(value, flag: str) -> int | None:
    """Bytes from an int or a string such as ``8G``, ``512M``, ``100k`` (powers of 1024); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise FlytError(f"{flag} must be a size such as 8G or 512M, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
        number = text[:-1] if scale > 1 else text
        try:
            size = int(float(number) * scale)
        except ValueError:
            raise FlytError(f"{flag} must be a size such as 8G or 512M, got {value!r}") from None
    if size <= 0:
        raise FlytError(f"{flag} must be positive, got {value!r}")
    return size


def check_spill_dir(path: Path) -> None:
    """--spill-dir must exist (a cluster's shared path is never created by accident) and be writable."""
    if not path.is_dir():
        raise FlytError(f"--spill-dir {path}: no such directory (create it; with --engine ray on a cluster it must be "
                        "a path every node can reach)")
    check_writable_dir(path, "--spill-dir")


def _spill_dir(out: Path | None, held: contextlib.ExitStack, spill_dir=None) -> str:
    """A temporary directory for spilled runs: in ``spill_dir`` when given, else beside ``out`` (same disk as
    the result), removed at the end (and, beside ``out``, named like an atomic write's temporary, by the
    next run of ``out`` if this one is killed; in ``spill_dir`` a killed run leaves ``flyt-sample-*.tmp``)."""
    if spill_dir is not None:
        parent = Path(spill_dir).absolute()
    else:
        out = out.absolute() if out is not None else None
        parent = out.parent if out is not None and out.parent.is_dir() else Path(tempfile.gettempdir()).absolute()
    prefix = f".{out.name}." if out is not None and parent == out.parent else "flyt-sample-"
    path = parent / f"{prefix}{uuid.uuid4().hex[:8]}.tmp"  # created only if the draw spills
    held.callback(shutil.rmtree, path, ignore_errors=True)
    return str(path)


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
        # Absolute paths: Ray tasks run in another working directory (on a cluster, on another machine).
        sources, excluded = score_sources(Path(cfg.scores).absolute(), cfg.column), None
        if cfg.exclude:  # rows dropped before any method runs (flyt.sampling.exclude)
            # Counting the kept rows reads only the rule columns: local processes even for --engine ray.
            sources, excluded = exclude(sources, cfg.exclude, [Path(d).absolute() for d in cfg.exclude_scores],
                                        get_map_shards("local"), min(cfg.workers, max(1, len(sources))))
        held.enter_context(session(cfg.engine))  # Ray, if used, starts once for every step of the draw
        selection = draw(spec, sources, engine=cfg.engine, workers=cfg.workers,
                         max_memory=parse_size(cfg.max_memory, "--max-memory"), spill_dir=_spill_dir(out, held, cfg.spill_dir),
                         groups=parse_groups(cfg.groups) if cfg.groups is not None else None)
        summary = summarize(spec, selection, column=cfg.column, scores=str(cfg.scores))
        if excluded is not None:
            summary["exclude"] = excluded
        if out is not None:
            write_subset_chunks(out, selection.chunks, selection.total, summary, cfg.counts_parquet, cfg.part_rows)
    return SampleResult(selection.pairs, selection.counts, summary, out)
