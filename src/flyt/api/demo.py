"""``flyt.demo``: the whole method on the built-in offline benchmark, as a Python call."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flyt.api._config import make_config
from flyt.errors import require
from flyt.pipeline.demo import DemoConfig, run_demo


@dataclass
class DemoResult:
    """Where the demo wrote its files, and the results data (what results.json holds)."""

    out: Path
    results: dict

    @property
    def report(self) -> Path:
        return self.out / "report.html"

    @property
    def markdown(self) -> Path:
        return self.out / "results.md"


def demo(config: DemoConfig | dict | None = None, *, printer=print, **fields) -> DemoResult:
    """Run the demo (assets, embeddings, baselines, FLYT, M-FLYT, subsets, students, report).

    >>> import flyt
    >>> result = flyt.demo(out="flyt-demo", quick=True)  # doctest: +SKIP
    >>> result.report  # doctest: +SKIP
    PosixPath('flyt-demo/report.html')
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
    require("matplotlib", "bench")  # the report's plots: fail before hours of work, not after
    if config is None:
        fields.setdefault("out", "flyt-demo")  # the CLI's default
    cfg = make_config(DemoConfig, config, fields, "flyt.demo")
    return DemoResult(Path(cfg.out), run_demo(cfg, printer=printer))
