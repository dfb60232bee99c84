"""``flyt.embed``: images and captions -> pool shards; labelled images -> task directories; or the
offline benchmark, as a Python call."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from flyt.api._config import make_config
from flyt.errors import FlytError

WHAT = ("pool", "task", "bench")


@dataclass
class EmbedConfig:
    """What ``flyt embed WHAT`` takes; every field is the CLI flag of the same name."""

    what: str  # pool | task | bench
    input: str | Path | None = None  # pool: pairs (parquet, image folder, webdataset); task: a task input directory
    out: str | Path | None = None  # pool/task: required; bench: default <cache>/bench/<encoder name>
    encoder: str = "offline"  # offline | openclip:MODEL[:WEIGHTS]
    cache: str | Path | None = None  # default $FLYT_CACHE or ~/.cache/flyt
    batch_size: int = 64
    shard_rows: int = 10_000  # pool: rows per output shard (webdataset input: one shard per .tar)
    format: str = "flyt"  # pool: flyt | datacomp
    pair: str = "b32"  # pool, format datacomp: npz key prefix
    seed: int = 0  # bench: injected defects and task splits
    swap_rate: float = 0.10  # bench
    duplicate_rate: float = 0.05  # bench
    workers: int = 2  # bench: rendering processes
    force: bool = False  # bench: rebuild pool and task files
    progress: bool | None = None  # None: on a terminal only

    def validate(self) -> "EmbedConfig":
        if self.what not in WHAT:
            raise FlytError(f"embed: WHAT must be one of {', '.join(WHAT)}, got {self.what!r}")
        if self.what != "bench" and (self.input is None or self.out is None):
            raise FlytError(f"embed {self.what}: --input and --out are required")
        if self.batch_size < 1:
            raise FlytError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.shard_rows < 1:
            raise FlytError(f"--shard-rows {self.shard_rows}: must be at least 1")
        if self.format not in ("flyt", "datacomp"):
            raise FlytError(f"--format must be flyt or datacomp, got {self.format!r}")
        for opt, v in (("--swap-rate", self.swap_rate), ("--duplicate-rate", self.duplicate_rate)):
            if not 0 <= v < 1:
                raise FlytError(f"{opt} {v}: must be in [0, 1)")
        return self


@dataclass
class EmbedResult:
    out: Path | None
    rows: int = 0  # pool: pairs embedded
    encoded: dict = field(default_factory=dict)  # newly encoded images / texts (the rest came from the cache)
    summary: dict = field(default_factory=dict)  # task: split sizes; bench: benchmark.json's summary

    def line(self) -> str:
        if self.summary.get("what") == "task":
            sizes = ", ".join(f"{k} {v}" for k, v in self.summary["sizes"].items())
            return f"wrote task {self.out}: {self.summary['classes']} classes, {self.summary['templates']} templates, {sizes}"
        if self.summary.get("what") == "bench":
            return f"pool {self.summary['pool']['by_source']}; tasks {self.summary['tasks']}"
        return (f"embedded {self.rows} pairs into {self.out} ({self.encoded.get('image', 0)} images and "
                f"{self.encoded.get('text', 0)} texts newly encoded)")


def _is_webdataset(path: str) -> bool:
    p = Path(path)
    return path.endswith(".tar") or "{" in path or "*" in path or (
        p.is_dir() and any(p.glob("*.tar")) and not any(p.glob("*.parquet")))


def _encoders(cfg: EmbedConfig):
    from flyt.encoders import get_encoder
    from flyt.encoders.cache import CachedEncoder
    from flyt.io.cache import cache_dir

    encoder = get_encoder(cfg.encoder, batch_size=cfg.batch_size)
    progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    return encoder, CachedEncoder(encoder, cache_dir(cfg.cache) / "embeddings", progress=progress)


def embed(config: EmbedConfig | dict | None = None, **fields) -> EmbedResult:
    """Embed a pool, a task, or the offline benchmark with a frozen encoder pair (cached by content).

    >>> import flyt
    >>> flyt.embed(what="pool", input="pairs.parquet", out="data/pool")  # doctest: +SKIP
    >>> flyt.embed(what="task", input="raw/cifar10", out="data/tasks/cifar10",
    ...            encoder="openclip:ViT-B-32:/models/b32.pt")  # doctest: +SKIP
    """
    from flyt.encoders.embed import embed_pairs, embed_task
    from flyt.io.inputs import read_pairs, read_task_input

    cfg = make_config(EmbedConfig, config, fields, "flyt.embed")
    if cfg.what == "pool":
        source = str(cfg.input)
        if _is_webdataset(source):  # streamed: one output shard per input .tar
            from flyt.encoders.openclip_datacomp import embed_webdataset
            from flyt.io.webdataset import list_tars

            list_tars(source, "pool webdataset")  # bad input fails before the model loads
            _, cached = _encoders(cfg)
            n = embed_webdataset(source, cached, cfg.out, cfg.format, cfg.pair)
        else:
            table, images = read_pairs(cfg.input)
            _, cached = _encoders(cfg)
            if cfg.format == "datacomp":
                from flyt.encoders.openclip_datacomp import embed_pairs_datacomp

                n = embed_pairs_datacomp(table, images, cached, cfg.out, cfg.pair, cfg.shard_rows, where=source)
            else:
                n = embed_pairs(table, images, cached, cfg.out, cfg.shard_rows, where=source)
        return EmbedResult(Path(cfg.out), n, dict(cached.encoded))
    if cfg.what == "task":
        from flyt.io import webdataset as wds

        if wds.is_task_webdataset(cfg.input):
            classnames, templates, splits = wds.read_task(cfg.input)
        else:
            classnames, templates, splits = read_task_input(cfg.input)
        _, cached = _encoders(cfg)
        sizes = embed_task(cfg.out, classnames, templates, splits, cached)
        summary = {"what": "task", "classes": len(classnames), "templates": len(templates), "sizes": sizes}
        return EmbedResult(Path(cfg.out), 0, dict(cached.encoded), summary)
    from flyt.bench.build import build_benchmark
    from flyt.bench.pool import PoolConfig

    encoder, _ = _encoders(cfg)
    pool_config = PoolConfig(swap_rate=cfg.swap_rate, duplicate_rate=cfg.duplicate_rate, seed=cfg.seed)
    progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    summary = build_benchmark(encoder, cfg.cache, cfg.out, pool_config, workers=cfg.workers, progress=progress,
                              force=cfg.force)
    return EmbedResult(Path(cfg.out) if cfg.out else None, summary=summary | {"what": "bench"})
