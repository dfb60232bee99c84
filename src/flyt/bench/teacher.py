"""The teacher: a locked-tower CLIP trained on the whole unfiltered pool (like DFN-Base / a pool CLIP).

Its space is the one the CLIP-score-style baselines, FLYT's scorer and its reference model work in:
the pool and the tasks' fit splits are written there as a flyt pool and task directories.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from flyt.bench.student import StudentConfig, train_student
from flyt.io.atomic import write_json
from flyt.io.pool import write_pool_shard
from flyt.io.tasks import Task, write_task
from flyt.progress import Progress

SEED = 12345
SHARDS = 4


def teacher_space(raw, text: pa.ChunkedArray, tasks: list[Task], config: StudentConfig, out: Path,
                  log: Callable[[str], None], progress: bool | None = False, seed: int = SEED) -> None:
    """Train the teacher on every pool row and write ``out/pool`` (uid, both embeddings in its space,
    the caption ``text``) and ``out/tasks/<name>`` (prompts and the train split only: validation and
    test stay unseen). ``out/done.json`` marks a finished space, which a later call reuses.
    ``progress`` (flyt.progress's show): a bar over the teacher's samples seen; ``seed``: the teacher's
    (the caller names ``out`` by it)."""
    out = Path(out)
    done = out / "done.json"
    if done.is_file():
        log("teacher space cached")
        return
    with Progress(config.samples_seen, "teacher", unit="sample", show=progress, scale=True) as bar:
        teacher = train_student(raw.image, raw.text, np.arange(len(raw)), config, seed=seed, progress=bar)
    with torch.no_grad():
        img = teacher.encode_image(torch.from_numpy(raw.image)).numpy()
        txt = teacher.encode_text(torch.from_numpy(raw.text)).numpy()
        bounds = np.linspace(0, len(raw), SHARDS + 1).astype(int)
        for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            write_pool_shard(out / "pool" / f"part-{s:05d}.parquet", raw.uids[a:b], img[a:b], txt[a:b],
                             {"text": text.slice(a, b - a)})
        for task in tasks:
            prompts = teacher.encode_text(torch.from_numpy(task.prompts)).numpy()
            images = teacher.encode_image(torch.from_numpy(task.train.images)).numpy()
            write_task(out / "tasks" / task.name, task.classnames, task.templates, prompts,
                       {"train": (images, task.train.labels)})
    write_json({"teacher": asdict(config)}, done)
    log(f"teacher CLIP trained on the unfiltered pool; pool and fit tasks embedded in its {config.dim}-d space")
