"""The offline benchmark's data-selection strategies: which subset of the pool each option draws.

A strategy has a ``name`` (its key in results.json and its subset file's stem), a ``label`` (its row in
the results table), the score ``column`` it reads (None for no filtering and random), and a grid of
``options``; ``draw(value, context)`` returns the multiset one option selects. Kinds:

- no filtering: every pool pair once (one option, nothing to choose);
- random fraction: a uniform fraction f of the pairs, each once (one option);
- top fraction: the floor(f n) highest-scored pairs, each once (options: fractions f);
- Soft Cap Sampling: exactly ``budget`` draws with repeats, penalty D per copy (options: penalties D);
- group-aware Soft Cap Sampling: the same, but the penalty counts copies per ``dedup`` group (every draw
  of any member of a near-duplicate group raises the group's count; flyt.sampling.groups), the groups
  read from the score directory ``context.score_dirs["dedup"]``, column ``dedup_group``;
- Soft Cap Sampling above a floor: the same draw over the pool less its bottom fraction q by another
  score (``floor_column``, the teacher's CLIP score), as ``flyt sample --exclude 'clip_score<t'`` does
  it (options: pairs (q, penalty); q = 0 is plain SCS, so validation may also choose no floor).

In results.json an option is written ``[kind, value]`` (``["all"]`` for no filtering, ``[kind, q,
penalty]`` above a floor).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np

from flyt.bench.student import multiset_indices
from flyt.io.subsets import write_subset
from flyt.io.uids import UID_DTYPE, uids_to_pairs
from flyt.sampling.draw import sample
from flyt.sampling.exclude import Rule, exclude
from flyt.sampling.group_keys import parse_groups
from flyt.sampling.methods import SampleSpec
from flyt.sampling.sources import score_sources

# The single-score baselines, each a top-fraction strategy (score column -> label).
BASELINES = {
    "clip_score": "CLIP score (teacher)",
    "negclip_loss": "negCLIPLoss (teacher)",
    "normsim_inf": "NormSim-inf",
    "normsim_2": "NormSim-2",
    "classifier": "Downstream-like classifier",
    "image_based": "Image-based (k-means)",
    "caption_words": "Caption length (words)",
}
# The learned scores, each drawn by top fraction and by Soft Cap Sampling (score column -> label).
LEARNED = {"flyt": "FLYT", "mflyt": "M-FLYT"}


@dataclass(frozen=True)
class Subset:
    """A drawn multiset: sorted unique uid pairs (DataComp's f0/f1 dtype) and the copies of each."""

    pairs: np.ndarray
    counts: np.ndarray

    def indices(self, pool_uids: np.ndarray) -> np.ndarray:
        """Pool row indices, one per copy (a student's training multiset)."""
        return multiset_indices(pool_uids, np.repeat(self.pairs, self.counts))


@dataclass(frozen=True)
class DrawContext:
    """What drawing needs besides the option: the pool, where each score column lives, the budget."""

    pool_uids: np.ndarray
    score_dirs: Mapping[str, Path]  # column -> its score directory; "baselines" holds every other column
    budget: int  # samples a student sees: SCS draws exactly this many
    seed: int  # the random fraction's seed

    def directory(self, column: str) -> Path:
        return Path(self.score_dirs.get(column, self.score_dirs["baselines"]))

    def pool_pairs(self) -> np.ndarray:
        """Every pool uid once, sorted (the order a subset file is in)."""
        return np.sort(uids_to_pairs(self.pool_uids, "pool"), order=["f0", "f1"])


@dataclass(frozen=True)
class Strategy:
    """One row of the results table: a way to draw a subset, with the options validation chooses from."""

    name: str
    label: str
    column: str | None = None
    options: tuple = ()
    kind: ClassVar[str] = ""

    @property
    def chooses(self) -> bool:
        """Whether validation has a choice to make (more than one option)."""
        return len(self.options) > 1

    def option(self, value) -> list:
        """An option as results.json writes it: ``[kind, value]``."""
        return [self.kind, value]

    def draw(self, value, context: DrawContext) -> Subset:
        raise NotImplementedError

    def draw_key(self, value) -> tuple:
        """What determines the draw of ``value``: two options with equal keys draw the same multiset
        (so their students are one; flyt.pipeline.demo_plan counts distinct ones)."""
        return (self.kind, self.column, value)

    def write(self, path: Path, subset: Subset, value) -> None:
        """The subset as a DataComp ``.npy`` plus its ``.json`` summary."""
        hist = np.bincount(subset.counts)
        summary = {
            "method": self.kind, "strategy": self.name, "column": self.column, "parameters": self.option(value)[1:],
            "total": int(subset.counts.sum()), "unique": int(len(subset.counts)),
            "max_count": int(subset.counts.max()),
            "count_histogram": {str(c): int(k) for c, k in enumerate(hist) if c and k},
        }
        write_subset(path, subset.pairs.astype(UID_DTYPE), subset.counts, summary)


@dataclass(frozen=True)
class NoFilter(Strategy):
    options: tuple = (None,)
    kind: ClassVar[str] = "all"

    def option(self, value) -> list:
        return [self.kind]

    def draw(self, value, context: DrawContext) -> Subset:
        pairs = context.pool_pairs()
        return Subset(pairs, np.ones(len(pairs), np.int64))


@dataclass(frozen=True)
class RandomFraction(Strategy):
    kind: ClassVar[str] = "random"

    def draw(self, value, context: DrawContext) -> Subset:
        pairs = context.pool_pairs()
        rng = np.random.default_rng(context.seed)
        keep = np.sort(rng.choice(len(pairs), size=int(value * len(pairs)), replace=False))
        return Subset(pairs[keep], np.ones(len(keep), np.int64))


@dataclass(frozen=True)
class TopFraction(Strategy):
    kind: ClassVar[str] = "topk"

    def draw(self, value, context: DrawContext) -> Subset:
        return _sample(SampleSpec("topk", fraction=value, fraction_rule="exact", budget=context.budget), self.column, context)


@dataclass(frozen=True)
class SoftCapSampling(Strategy):
    kind: ClassVar[str] = "scs"

    def draw(self, value, context: DrawContext) -> Subset:
        # SCS draws the whole samples-seen budget: the counts are the training multiset.
        return _sample(SampleSpec("scs", total=context.budget, penalty=value, seed=0), self.column, context)


@dataclass(frozen=True)
class GroupedSoftCapSampling(Strategy):
    kind: ClassVar[str] = "scs_groups"
    group_column: str = "dedup_group"

    def draw(self, value, context: DrawContext) -> Subset:
        groups = parse_groups(f"{context.score_dirs['dedup']}:{self.group_column}")
        return _sample(SampleSpec("scs", total=context.budget, penalty=value, seed=0), self.column, context, groups)


@dataclass(frozen=True)
class FlooredSoftCapSampling(Strategy):
    kind: ClassVar[str] = "scs_floor"
    floor_column: str = "clip_score"

    def option(self, value) -> list:
        return [self.kind, *value]

    def draw_key(self, value) -> tuple:
        q, penalty = value  # no floor: plain Soft Cap Sampling's draw
        return (self.kind, self.column, self.floor_column, q, penalty) if q else (SoftCapSampling.kind, self.column, penalty)

    def draw(self, value, context: DrawContext) -> Subset:
        q, penalty = value
        spec = SampleSpec("scs", total=context.budget, penalty=penalty, seed=0)
        return _sample(spec, self.column, context, rules=[floor_rule(self.floor_column, q, context)] if q else [])


def floor_rule(column: str, q: float, context: DrawContext) -> Rule:
    """The rule that drops the pool's bottom fraction ``q`` by ``column``: ``column < t`` with t the
    pool's floor(q n)-th smallest value (0-based), so exactly floor(q n) rows go when no value ties t.
    t is one of the stored values, so the rule compares it exactly in the column's dtype."""
    values = np.concatenate([s.load()[1] for s in score_sources(context.directory(column), column)])
    t = float(np.sort(values)[int(q * len(values))])
    return Rule(column, "<", t, f"{column}<{t!r}")


def _sample(spec: SampleSpec, column: str, context: DrawContext, groups=None, rules=()) -> Subset:
    sources = score_sources(context.directory(column), column)
    if rules:  # rows matching a rule are gone before the draw (flyt.sampling.exclude)
        dirs = sorted({str(context.directory(r.column)) for r in rules})
        sources, _ = exclude(sources, rules, dirs)
    selection = sample(spec, sources, groups=groups)
    return Subset(selection.pairs, selection.counts)


def demo_strategies(fractions, penalties, random_fraction: float, grouped: bool = True,
                    floor_quantiles=()) -> list[Strategy]:
    """The demo's strategies, in the results table's order: no filtering, random, every baseline by top
    fraction, then FLYT and M-FLYT each by top fraction and by Soft Cap Sampling, then (``floor_quantiles``
    non-empty) each by SCS above a CLIP-score floor (options: every q crossed with every penalty), then
    (``grouped``: when a ``dedup`` score directory exists) M-FLYT by group-aware SCS over the dedup groups."""
    out: list[Strategy] = [
        NoFilter("no_filter", "No filtering"),
        RandomFraction("random", f"Random {random_fraction:.0%}", options=(random_fraction,)),
    ]
    out += [TopFraction(c, f"{label}, top fraction", c, tuple(fractions)) for c, label in BASELINES.items()]
    for column, label in LEARNED.items():
        out.append(TopFraction(f"{column}_topk", f"{label}, top fraction", column, tuple(fractions)))
        out.append(SoftCapSampling(f"{column}_scs", f"{label} + Soft Cap Sampling", column, tuple(penalties)))
    if floor_quantiles:
        grid = tuple((q, p) for q in floor_quantiles for p in penalties)
        out += [FlooredSoftCapSampling(f"{column}_scs_floor", f"{label} + SCS above a CLIP-score floor", column, grid)
                for column, label in LEARNED.items()]
    if grouped:
        out.append(GroupedSoftCapSampling("mflyt_scs_groups", "M-FLYT + group-aware SCS (dedup groups)", "mflyt",
                                          tuple(penalties)))
    return out
