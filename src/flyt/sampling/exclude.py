"""``flyt sample --exclude 'COL>X'``: drop rows before any method runs (decontamination, dedup).

A rule is ``COLUMN OP VALUE`` with OP one of ``> >= < <= == !=``: a row is dropped when any rule
holds for it, e.g. ``contamination_max>0.9`` (near copies of test images) or ``dedup_keep==0``
(every duplicate but its group's representative). The column is read from the score shard itself
when it has it, else from the ``--exclude-scores`` directories, joined by uid (``ScoreDirs``).
VALUE is compared in the column's stored dtype, as ``--threshold`` is (a float32 column against
float32(X)); integer and boolean (0/1) columns compare exactly.

The decision is a function of each row's own values, so the kept rows, and every draw from them,
are the same for any sharding, file order, worker count or engine: sampling with a rule equals
sampling a pool from which those rows were removed beforehand (tests/test_contamination.py).
Cost: one extra read of the rule columns to count the kept rows (``num_rows`` must be exact for
top-k fractions and the summary), then the usual passes read them again beside the scores.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.io.arrays import float_column
from flyt.io.parquet import list_shards, read_schema, read_table
from flyt.io.scores import ScoreDirs

OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
_RULE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Rule:
    column: str
    op: str
    value: float
    text: str

    def __str__(self) -> str:
        return self.text


def parse_rule(text: str) -> Rule:
    """``COL>X`` (or >=, <, <=, ==, !=) -> Rule; anything else is one clear line."""
    m = _RULE.match(str(text))
    if not m:
        raise FlytError(f"--exclude {text!r}: expected COLUMN OP VALUE with OP one of > >= < <= == != "
                        "(e.g. 'contamination_max>0.9' or 'dedup_keep==0')")
    column, op, raw = m.groups()
    if column == "uid":
        raise FlytError(f"--exclude {text!r}: uid is the key column, not a score")
    try:
        value = float(raw)
    except ValueError:
        raise FlytError(f"--exclude {text!r}: {raw!r} is not a number") from None
    if not np.isfinite(value):
        raise FlytError(f"--exclude {text!r}: the value must be finite")
    return Rule(column, op, value, f"{column}{op}{raw}")


def _cut(dtype: np.dtype, value: float) -> float:
    """``value`` as the column's dtype would store it (float columns), as a float64 for comparing."""
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            return float(dtype.type(value))
    return float(value)


def _column_dtype(path, column: str) -> np.dtype:
    kind = read_schema(path).field(column).type
    try:
        return np.dtype(kind.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        return np.dtype(np.float64)


def _where_stored(columns, dirs) -> tuple:
    """((column, the first --exclude-scores shard holding it), ...) for the rule columns they hold."""
    found: dict[str, str] = {}
    for d in dirs:
        for path in list_shards(d, kind="scores"):
            for c in read_schema(path).names:
                if c in columns:
                    found.setdefault(c, str(path))
    return tuple(found.items())


@dataclass(frozen=True)
class Exclusion:
    """The rules and where their columns live; ``mask(path)`` marks the rows of one score shard to drop."""

    rules: tuple
    dirs: tuple = ()
    stored: tuple = ()  # (column, a shard of ``dirs`` holding it): where its dtype is read

    def mask(self, path) -> np.ndarray:
        path = Path(path)
        names = read_schema(path).names
        own = [r.column for r in self.rules if r.column in names]
        table = read_table(path, list(dict.fromkeys(["uid", *own])))
        values = {c: float_column(table, c, str(path)) for c in own}
        dtypes = {c: _column_dtype(path, c) for c in own}
        other = list(dict.fromkeys(r.column for r in self.rules if r.column not in names))
        if other:
            stored = dict(self.stored)
            missing = [c for c in other if c not in stored]
            if missing:
                raise FlytError(f"--exclude: column '{missing[0]}' is in neither {path} nor the --exclude-scores directories"
                                + ("" if self.dirs else " (none given)"))
            uids = table.column("uid").to_numpy(zero_copy_only=False)
            values |= ScoreDirs(self.dirs).join(uids, other, str(path), path.stem)
            dtypes |= {c: _column_dtype(stored[c], c) for c in other}
        drop = np.zeros(table.num_rows, dtype=bool)
        for r in self.rules:
            drop |= OPS[r.op](values[r.column], _cut(dtypes[r.column], r.value))
        return drop


@dataclass(frozen=True)
class ExcludedScores:
    """A score source (``ParquetScores``) less the rows an ``Exclusion`` drops."""

    source: object
    exclusion: Exclusion
    rows: int  # rows kept (counted once by ``exclude``)

    @property
    def where(self) -> str:
        return self.source.where

    @property
    def path(self) -> str:
        return self.source.path

    @property
    def column(self) -> str:
        return self.source.column

    def num_rows(self) -> int:
        return self.rows

    def score_dtype(self) -> np.dtype:
        return self.source.score_dtype()

    def load(self, stride: int = 1):
        pairs, scores = self.source.load()
        keep = ~self.exclusion.mask(self.source.path)
        if len(keep) != len(scores):
            raise FlytError(f"{self.source.path}: shard changed while it was being read")
        return pairs[keep][::stride], scores[keep][::stride]


def _count(item) -> tuple[int, int]:
    exclusion, source = item
    drop = exclusion.mask(source.path)
    return int(len(drop) - drop.sum()), int(drop.sum())


def exclude(sources, rules, dirs=(), map_shards=None, workers: int = 1) -> tuple[list, dict]:
    """Wrap score ``sources`` so that rows matching any rule are gone; returns them and the summary's
    ``exclude`` entry (rules, directories, rows before, rows excluded)."""
    rules = tuple(r if isinstance(r, Rule) else parse_rule(r) for r in rules)
    dirs = tuple(str(d) for d in dirs)
    for d in dirs:
        if not Path(d).is_dir():
            raise FlytError(f"--exclude-scores: directory {d} does not exist")
    for s in sources:
        if not hasattr(s, "path"):
            raise FlytError(f"--exclude needs score shards on disk, got {s.where}")
    exclusion = Exclusion(rules, dirs, _where_stored({r.column for r in rules}, dirs))
    if map_shards is None:
        counts = [_count((exclusion, s)) for s in sources]
    else:
        counts = list(map_shards(_count, [(exclusion, s) for s in sources], workers))
    wrapped = [ExcludedScores(s, exclusion, kept) for s, (kept, _) in zip(sources, counts)]
    report = {
        "rules": [str(r) for r in rules],
        "scores": list(dirs),
        "rows_before": sum(k + x for k, x in counts),
        "rows_excluded": sum(x for _, x in counts),
    }
    return wrapped, report


__all__ = ["Exclusion", "ExcludedScores", "Rule", "exclude", "parse_rule"]
