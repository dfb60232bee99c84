"""``flyt.train``: learn a FLYT scorer or an M-FLYT mixer, as a Python call."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flyt.errors import FlytError
from flyt.training.config import TrainConfig, load_config
from flyt.training.loop import train as train_loop


@dataclass
class TrainResult:
    """A finished training run: its directory, the scorer file and the resolved config."""

    run_dir: Path
    scorer: Path  # RUN/scorer.pt, for flyt.score(scorers=[...]) or models.checkpoint.load_scorer
    config: TrainConfig

    def line(self) -> str:
        c = self.config
        return f"trained {c.mode} scorer '{c.name}' for {c.steps} steps -> {self.scorer}"


def train(
    config: TrainConfig | Mapping | str | os.PathLike,
    *,
    overrides: list[str] | tuple = (),
    resume: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Train FLYT (``mode: flyt``) or M-FLYT (``mode: mflyt``) on a pool and downstream tasks.

    ``config`` is a ``TrainConfig``, a mapping of its keys (nested mappings for ``reference`` and
    ``scorer``), or the path of a YAML file; ``overrides`` are ``key=value`` strings as ``--set`` takes.
    ``resume`` continues the run in ``out`` from its last checkpoint; the config must be the run's
    config.yaml in every key but ``steps`` (a changed key is a FlytError naming it).

    The pool is held in memory when its float32 embeddings take less than 2 GiB, else streamed
    (``pool_buffer``: ``"auto"`` or a number of rows): rows drawn with replacement in blocks of
    ``pool_block`` rows through a shuffle buffer of ``pool_buffer x (d_img + d_txt) x 4`` bytes, its
    position kept in the checkpoints (``flyt.training.upstream``; the DataComp recipe: docs/datacomp.md).

    >>> import flyt
    >>> run = flyt.train({"pool": "data/pool", "tasks": ["data/tasks/imagenet"], "steps": 5000,
    ...                   "out": "runs/flyt"})  # doctest: +SKIP
    >>> run.scorer  # doctest: +SKIP
    PosixPath('runs/flyt/scorer.pt')
    """
    if isinstance(config, (str, os.PathLike)):
        cfg = load_config(config, overrides)
    elif isinstance(config, (TrainConfig, Mapping)):
        if overrides:
            raise FlytError("flyt.train: overrides apply to a YAML path; change the config object instead")
        cfg = config.validated() if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    else:
        raise FlytError(f"flyt.train: config must be a TrainConfig, a mapping or a YAML path, got {type(config).__name__}")
    scorer = train_loop(cfg, resume=resume, progress=progress)
    return TrainResult(Path(cfg.out), Path(scorer), cfg)
