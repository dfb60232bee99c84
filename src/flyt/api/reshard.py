"""``flyt.reshard``: a subset + the pool's webdataset tars -> new training shards, as a Python call;
and ``flyt.subset_stream``: the same samples straight from the original tars, without rewriting."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flyt.api._config import make_config
from flyt.engines import ENGINES, session
from flyt.errors import FlytError
from flyt.io.stream import SubsetStream, subset_stream
from flyt.pipeline.reshard import ReshardSummary
from flyt.pipeline.reshard import reshard as run_reshard

__all__ = ["ReshardConfig", "ReshardResult", "reshard", "subset_stream", "SubsetStream"]


@dataclass
class ReshardConfig:
    """What ``flyt reshard`` takes; every field is the CLI flag of the same name."""

    subset: str | Path  # DataComp subset .npy (sorted uid pairs; a uid repeated c times = c copies), or parts (dir / manifest.json)
    shards: str | list[str]  # input webdataset tars: brace pattern(s) {00000000..00000127}.tar, globs or directories
    out: str | Path  # output directory: <8-digit number>.tar shards + _stats.json
    samples_per_shard: int = 10_000
    engine: str = "local"  # local | ray
    workers: int = 1
    seed: int = 0

    def validate(self) -> "ReshardConfig":
        self.shards = [str(self.shards)] if isinstance(self.shards, (str, Path)) else [str(s) for s in self.shards]
        if not self.shards:
            raise FlytError("option --shards: give at least one shard pattern")
        for name, low in (("samples_per_shard", 1), ("workers", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise FlytError(f"option --{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if self.engine not in ENGINES:
            raise FlytError(f"option --engine: unknown engine {self.engine!r} (choose from {', '.join(ENGINES)})")
        return self


@dataclass
class ReshardResult(ReshardSummary):
    """What a reshard did: shards written/skipped, samples, missing uids, failures; see ``_stats.json``."""

    @property
    def stats(self) -> Path:
        return self.out / "_stats.json"

    def raise_for_failures(self) -> None:
        if self.failures:
            what, error = self.failures[0]
            raise FlytError(
                f"{len(self.failures)} failure(s) (first: {error}); the other shards were written; "
                "fix the input and re-run to finish"
            )


def reshard(config: ReshardConfig | dict | None = None, *, check: bool = True, **fields) -> ReshardResult:
    """Write the subset's samples into new shards with the copies of each uid spread apart.

    >>> import flyt
    >>> r = flyt.reshard(subset="subset.npy", shards="shards/{00000000..00001287}.tar", out="train")  # doctest: +SKIP
    >>> r.shards, r.samples, r.missing_uids  # doctest: +SKIP

    Re-running resumes (finished shards are kept). A damaged input tar does not stop the others;
    with ``check`` (default) it raises ``FlytError`` at the end, naming it.
    """
    cfg = make_config(ReshardConfig, config, fields, "flyt.reshard")
    with session(cfg.engine):  # Ray, if used, starts once for the index and the write passes
        summary = run_reshard(cfg.subset, cfg.shards, cfg.out, samples_per_shard=cfg.samples_per_shard, seed=cfg.seed,
                              engine=cfg.engine, workers=cfg.workers)
    result = ReshardResult(**vars(summary))
    if check:
        result.raise_for_failures()
    return result
