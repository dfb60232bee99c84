"""Cached runs of the benchmark: scorers trained by ``flyt.train`` and students trained and evaluated.

Each run's result is a deterministic function of its inputs, so it is stored under ``cache_key`` of
them and reused by a later run with the same inputs (a different input is a different key, never a
stale result).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from flyt.bench.evaluate import evaluate, group_averages, summarise_seeds
from flyt.bench.student import StudentConfig, train_students
from flyt.io.atomic import write_json
from flyt.io.cache import cache_key
from flyt.io.tasks import Task
from flyt.models.checkpoint import load_scorer
from flyt.training.loop import train


def scorer_run_dir(config: dict, runs_dir: Path) -> Path:
    """Where train_scorer trains (or finds) the scorer of ``config``."""
    return Path(runs_dir) / f"{config['mode']}-{cache_key(config)}"


def train_scorer(config: dict, runs_dir: Path, log: Callable[[str], None], progress: bool | None = False) -> Path:
    """Train (or reuse) the scorer of a training config (flyt.training's, without ``out``) in
    ``runs_dir/<mode>-<key of the config>``; an interrupted run resumes from its latest checkpoint.
    ``progress``: flyt.training's (a bar over the steps)."""
    run_dir = scorer_run_dir(config, runs_dir)
    if (run_dir / "scorer.pt").is_file():
        log(f"{config['mode']}: cached in {run_dir}")
        return run_dir / "scorer.pt"
    resume = (run_dir / "checkpoints" / "latest.pt").is_file()
    t = time.perf_counter()
    path = train({**config, "out": str(run_dir)}, resume=resume, progress=progress)
    log(f"{config['mode']}: trained {config['steps']} steps in {time.perf_counter() - t:.1f}s")
    return Path(path)


def mixer_weights(path: Path) -> dict[str, float]:
    """An M-FLYT checkpoint's weight on each (standardised) input score column."""
    return load_scorer(path).model.weights()


class StudentRuns:
    """Students trained and evaluated, cached by what determines their result.

    A student's accuracies are a deterministic function of its training multiset (row indices, in
    order), its seed, the student settings, the benchmark (``data_key``) and the evaluated split, so a
    re-run reuses them: ``<dir>/<key of those>.json``. Missing students train together in one batch,
    each distinct one once (two options that draw the same multiset share their student).
    """

    def __init__(self, directory: Path, data_key: str, raw, config: StudentConfig):
        self.dir, self.data_key, self.raw, self.config = Path(directory), data_key, raw, config
        self.trained = self.cached = 0

    def _path(self, indices: np.ndarray, seed: int, split: str) -> Path:
        key = cache_key(np.asarray(indices, dtype=np.int64), self.data_key, asdict(self.config), int(seed), split,
                        length=16)
        return self.dir / f"{key}.json"

    def _missing(self, paths: list[Path]) -> dict[Path, int]:
        """Each distinct path not on disk -> the first run that has it."""
        missing: dict[Path, int] = {}
        for i, path in enumerate(paths):
            if path not in missing and not path.is_file():
                missing[path] = i
        return missing

    def todo(self, runs: list, split: str) -> int:
        """How many students evaluate() would train for ``runs`` (the others are cached or repeats)."""
        return len(self._missing([self._path(idx, seed, split) for idx, seed in runs]))

    def evaluate(self, runs: list, tasks: list[Task], split: str, progress=None) -> list[dict]:
        """Per-task accuracies on the tasks' ``split`` (validation or test) and their average, for each
        ``(indices, seed)`` in ``runs``. ``progress`` (a flyt.progress.Progress) advances by the samples
        the trained students see (``samples_seen`` each; cached ones add nothing)."""
        paths = [self._path(idx, seed, split) for idx, seed in runs]
        todo = list(self._missing(paths).values())
        self.trained, self.cached = self.trained + len(todo), self.cached + len(runs) - len(todo)
        if todo:
            trained = train_students(self.raw.image, self.raw.text, [runs[i] for i in todo], self.config, progress)
            for i, student in zip(todo, trained):
                write_json(evaluate(student, tasks, split=split), paths[i])
        return [json.loads(p.read_text()) for p in paths]

    def per_seed(self, candidates: list, seeds, tasks: list[Task], split: str, progress=None) -> list[list[dict]]:
        """For each candidate multiset (row indices), the results of its students of ``seeds`` (in order);
        every student trained in one batch."""
        k = len(seeds)
        flat = self.evaluate([(idx, seed) for idx in candidates for seed in seeds], tasks, split, progress)
        return [flat[j * k:(j + 1) * k] for j in range(len(candidates))]

    def validation_means(self, candidates: list, seeds, tasks: list[Task], progress=None) -> list[float]:
        """Each candidate's validation average (equal weight per task), the mean over the students of
        ``seeds``: what an option is chosen by (flyt.bench.protocol.best_option)."""
        return [float(np.mean([r["average"] for r in runs]))
                for runs in self.per_seed(candidates, seeds, tasks, "validation", progress)]

    def test_summary(self, indices, seeds, tasks: list[Task], groups: dict, progress=None) -> dict:
        """The test-split summary of one chosen multiset (flyt.bench.evaluate.summarise_seeds): each of
        its students' per-task accuracies and ``groups``' averages, their means and spreads over seeds."""
        (runs,) = self.per_seed([indices], seeds, tasks, "test", progress)
        return summarise_seeds([group_averages(r, groups) for r in runs], seeds, indices)
