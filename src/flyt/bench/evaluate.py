"""Zero-shot evaluation of students on a task split (test or validation), and the several-seeds protocol."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from flyt.bench.student import Student, StudentConfig, multiset_indices, train_students
from flyt.errors import FlytError
from flyt.io.tasks import Task


def zeroshot_weights(student: Student, prompts: np.ndarray) -> torch.Tensor:
    """(templates, classes, d_txt) prompt embeddings -> (classes, dim) classifier: each filled
    template is projected and normalised, averaged over templates, normalised again (CLIP's
    prompt ensembling)."""
    p = torch.from_numpy(np.ascontiguousarray(prompts, dtype=np.float32))
    with torch.no_grad():
        per_template = student.encode_text(p)  # (T, C, dim)
        return F.normalize(per_template.mean(0), dim=-1)


def zeroshot_accuracy(student: Student, task: Task, split: str = "test") -> float:
    """Top-1 accuracy of the zero-shot classifier on a task split (``test``, or ``validation``)."""
    data = task.split(split)
    classifier = zeroshot_weights(student, task.prompts)
    with torch.no_grad():
        image = student.encode_image(torch.from_numpy(np.ascontiguousarray(data.images, dtype=np.float32)))
        pred = (image @ classifier.T).argmax(1).numpy()
    return float((pred == data.labels).mean())


def evaluate(student: Student, tasks: list[Task], split: str = "test") -> dict:
    """Per-task accuracy on the split named ``split`` and their unweighted average (``"average"``)."""
    if not tasks:
        raise FlytError("no tasks to evaluate on")
    out = {t.name: zeroshot_accuracy(student, t, split) for t in tasks}
    out["average"] = float(np.mean([out[t.name] for t in tasks]))
    return out


def evaluate_selection(
    image: np.ndarray,
    text: np.ndarray,
    pool_uids: np.ndarray,
    selection,
    tasks: list[Task],
    config: StudentConfig = StudentConfig(),
    seeds=(0, 1, 2),
    split: str = "test",
    progress=None,
) -> dict:
    """Train one student per seed on the selection and evaluate each (``progress``: a
    flyt.progress.Progress advanced by the samples the students see, see train_students).

    Returns ``{"per_seed": [{task: acc, ..., "average": acc}], "mean": {...}, "std": {...}}``
    (std is the population standard deviation over seeds).
    """
    indices = multiset_indices(pool_uids, selection)
    students = train_students(image, text, [(indices, seed) for seed in seeds], config, progress)
    return summarise_seeds([evaluate(student, tasks, split) for student in students], seeds, indices)


def group_averages(run: dict, groups: dict[str, list[str]]) -> dict:
    """One student's evaluation with the unweighted average over each named group of tasks added
    (e.g. ``{"average_flyt": FLYT's tasks, "average_heldout": the held-out tasks}``); an empty group
    adds nothing. Averaging per seed first keeps each average's seed spread a spread of averages."""
    return {**run, **{k: float(np.mean([run[t] for t in names])) for k, names in groups.items() if names}}


def summarise_seeds(runs: list[dict], seeds, indices: np.ndarray) -> dict:
    """Per-seed evaluations of one selection -> evaluate_selection's summary (mean, population std)."""
    keys = list(runs[0])
    return {
        "per_seed": runs,
        "mean": {k: float(np.mean([r[k] for r in runs])) for k in keys},
        "std": {k: float(np.std([r[k] for r in runs])) for k in keys},
        "seeds": list(seeds),
        "selected": int(len(indices)),
        "unique": int(len(np.unique(indices))),
    }


def defect_auc(scores: dict, defects: np.ndarray, clean: str = "none") -> dict:
    """For each score column and each ground-truth defect: the probability that a clean pair scores
    above a pair with that defect (ties count one half), i.e. the ROC AUC of the score as a detector of
    the defect. 0.5 = blind to it; below 0.5 = prefers the defect. NaN scores are left out."""
    defects = np.asarray(defects)
    out = {}
    for column, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        keep = np.isfinite(values)
        good = values[keep & (defects == clean)]
        row = {}
        for defect in sorted(set(defects.tolist()) - {clean}):
            bad = values[keep & (defects == defect)]
            if len(good) and len(bad):
                row[defect] = _auc(good, bad)
        out[column] = row
    return out


def copy_detection(nearest: np.ndarray, group_size: np.ndarray, image_hash) -> dict:
    """dedup judged on what it detects: which rows have an exact copy in the pool.

    An injected ``duplicate`` row is byte-identical (image and caption) to its original, so "which of
    the two is the copy" is not a property of either row: a per-row label that marks only the copy
    caps every detector below 1 (``dedup_summary``'s ceiling). What is a property of a row is whether
    its image bytes occur in another row too; ground truth here is ``image_hash`` (the pool's
    ``image_sha1``, which no scorer reads), so the positives are the injected copies, their originals
    and the sources' own byte-identical images, and the negatives every row whose image is unique.

    Returns ``rows_with_copy``; ``auc``: P(a row with a unique image has a larger dedup_distance =
    1 - ``nearest`` than a row with a copy), ties one half; ``recall``: the share of rows with a copy
    that dedup puts in a group of two or more; ``grouped_exact``: the share of the rows in such groups
    that have an exact copy (the others are near duplicates at cosine >= the threshold, which the
    byte-level truth does not mark, so this is not a precision).
    """
    hashes = np.asarray(image_hash, dtype=object)
    _, inverse, counts = np.unique(hashes.astype(str), return_inverse=True, return_counts=True)
    has_copy = counts[inverse] > 1
    grouped = np.asarray(group_size) > 1
    distance = 1.0 - np.asarray(nearest, dtype=np.float64)
    out = {"rows_with_copy": int(has_copy.sum()), "rows": int(len(hashes))}
    if has_copy.any() and (~has_copy).any():
        out["auc"] = _auc(distance[~has_copy], distance[has_copy])
    if has_copy.any():
        out["recall"] = float(grouped[has_copy].mean())
    if grouped.any():
        out["grouped_exact"] = float(has_copy[grouped].mean())
    return out


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos n_neg), with average ranks for ties."""
    both = np.concatenate([positive, negative])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank of each distinct value
    ranks = average_rank[inverse]
    n = len(positive)
    return float((ranks[:n].sum() - n * (n + 1) / 2.0) / (n * len(negative)))
