"""The benchmark's downstream tasks, built from rendered labelled sets.

- ``openmoji_groups``: OpenMoji emoji (an art style absent from the pool) by emoji group;
- ``fluent_subgroups``: Microsoft Fluent flat emoji (also absent from the pool) by subgroup;
- ``fashion_mnist``: Fashion-MNIST clothing photos (out-of-domain for an emoji/clip-art pool);
- ``digits``: scikit-learn's 8x8 handwritten digits (out-of-domain);
- ``emoji_names``: the general task (the paper's ImageNet, in miniature): 794 emoji, each drawn by
  EmojiOne 2.x and EmojiOne 1.x (sets in neither the pool nor any other task) -> the emoji's Unicode name
  ("admission tickets", "neutral face", "videocassette"); one drawing of each class trains, the other
  tests (flyt.bench.assets._source_general_emoji says which emoji are left out, and why).
Train/test splits are stratified and fixed by seed. Only evaluation may read test splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from flyt.bench.assets import load_rendered
from flyt.errors import FlytError

EMOJI_TEMPLATES = [
    "an emoji of a {c}.",
    "a {c} emoji.",
    "an icon of a {c}.",
    "a cartoon drawing of a {c}.",
    "a colorful illustration of a {c}.",
]
PHOTO_TEMPLATES = [
    "a photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low resolution photo of a {c}.",
    "a blurry photo of a {c}.",
    "a picture of a {c}.",
]
DIGIT_TEMPLATES = [
    'a photo of the number: "{c}".',
    "a drawing of the digit {c}.",
    "a handwritten {c}.",
    "the number {c}.",
]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# OpenMoji group slugs -> class names that read well inside the templates.
OPENMOJI_GROUPS = {
    "smileys-emotion": "smiley face",
    "people-body": "person or body part",
    "animals-nature": "animal or plant",
    "food-drink": "food or drink",
    "travel-places": "place or vehicle",
    "activities": "sport or activity",
    "objects": "everyday object",
    "symbols": "symbol",
    "flags": "flag",
}


@dataclass
class TaskSpec:
    """A task before embedding: class names, templates and split images (PNG bytes) + labels."""

    name: str
    classnames: list[str]
    templates: list[str]
    splits: dict = field(default_factory=dict)  # split -> (list of PNG bytes, int labels)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each class split by ``test_fraction`` (at least one of each side)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(idx) - 1, max(1, int(round(test_fraction * len(idx)))))
        test.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


def _split_spec(name, classnames, templates, images, labels, test_fraction, seed) -> TaskSpec:
    labels = np.asarray(labels, dtype=np.int64)
    tr, te = stratified_split(labels, test_fraction, seed)
    return TaskSpec(name, classnames, templates, {
        "train": ([images[i] for i in tr], labels[tr]),
        "test": ([images[i] for i in te], labels[te]),
    })


def _by_label(table: pa.Table, column: str, mapping=None, min_count: int = 1):
    values = table.column(column).to_pylist()
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    kept = [v for v in sorted(counts) if counts[v] >= min_count and (mapping is None or v in mapping)]
    if len(kept) < 2:
        raise FlytError(f"rendered set: fewer than 2 classes in column '{column}' with at least {min_count} images")
    index = {v: i for i, v in enumerate(kept)}
    rows = [i for i, v in enumerate(values) if v in index]
    names = [mapping[v] if mapping else v for v in kept]
    images = table.column("image").to_pylist()
    return names, [images[i] for i in rows], [index[values[i]] for i in rows]


def build_task_specs(cache, seed: int = 0, test_fraction: float = 0.5, limit: int | None = None) -> list[TaskSpec]:
    """The four benchmark tasks from the rendered sets (``limit`` rows per set, for tests)."""

    def rendered(name):
        t = load_rendered(cache, name)
        if limit and t.num_rows > limit:  # evenly spaced rows keep every class and split
            t = t.take(np.unique(np.linspace(0, t.num_rows - 1, limit).astype(np.int64)))
        return t

    specs = []
    names, imgs, labels = _by_label(rendered("openmoji"), "group", OPENMOJI_GROUPS)
    specs.append(_split_spec("openmoji_groups", names, EMOJI_TEMPLATES, imgs, labels, test_fraction, seed))

    fluent = rendered("fluent")
    names, imgs, labels = _by_label(fluent, "subgroup", min_count=2 if limit else 20)
    names = [n.replace("-", " ") for n in names]  # "animal-mammal" -> "animal mammal"
    specs.append(_split_spec("fluent_subgroups", names, EMOJI_TEMPLATES, imgs, labels, test_fraction, seed))

    # Fashion-MNIST keeps its own train/test files (the rendered set records the split).
    from flyt.bench.assets import FASHION_CLASSES

    fm = rendered("fashion_mnist")
    label_of = {c: i for i, c in enumerate(FASHION_CLASSES)}
    groups, subs = fm.column("group").to_pylist(), fm.column("subgroup").to_pylist()
    images = fm.column("image").to_pylist()
    spec = TaskSpec("fashion_mnist", list(FASHION_CLASSES), PHOTO_TEMPLATES)
    for split in ("train", "test"):
        rows = [i for i, s in enumerate(subs) if s == split]
        labels = np.asarray([label_of[groups[i]] for i in rows], dtype=np.int64)
        spec.splits[split] = ([images[i] for i in rows], labels)
    specs.append(spec)

    dg = rendered("digits")
    labels = np.asarray([int(g) for g in dg.column("group").to_pylist()])
    images = dg.column("image").to_pylist()
    specs.append(_split_spec("digits", DIGIT_NAMES, DIGIT_TEMPLATES, images, labels, test_fraction, seed))

    general = load_rendered(cache, "general_emoji")
    if limit and general.num_rows > limit:  # its rows come in pairs (both drawings of an emoji): keep pairs
        general = general.slice(0, limit)
    names, imgs, labels = _by_label(general, "group", min_count=2)  # a class needs a drawing on each side
    specs.append(_split_spec("emoji_names", names, EMOJI_TEMPLATES, imgs, labels, test_fraction, seed))
    return specs


def describe(specs: list[TaskSpec]) -> dict:
    """Classes and split sizes per task (for the docs and the report)."""
    return {s.name: {"classes": len(s.classnames), **{k: len(v[1]) for k, v in s.splits.items()}} for s in specs}
