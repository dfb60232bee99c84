"""Downstream tasks (clip_benchmark / DataComp conventions), as embeddings.

A task directory holds ``classnames.txt`` (one name a line),
``zeroshot_classification_templates.txt`` (one template a line, ``{c}`` marks the class name),
``train.parquet`` and optional ``test.parquet`` (``image_embedding``, ``label``), and
``prompts.parquet`` (``template_index``, ``class_index``, ``text_embedding``): the frozen text
tower's embedding of every filled template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.io.arrays import embedding_matrix, l2_normalise
from flyt.io.parquet import read_table
from flyt.io.pool import IMAGE, TEXT

CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
PROMPTS = "prompts.parquet"


@dataclass
class Split:
    images: np.ndarray  # (n, d_img) float32, L2-normalised
    labels: np.ndarray  # (n,) int64


SPLITS = ("train", "validation", "test")


@dataclass
class Task:
    """A task in memory. ``train`` and ``test`` are the directory's files; ``validation`` is never on
    disk: a protocol (the offline benchmark's) carves it out of train and keeps it here, so ``test``
    only ever holds test data."""

    name: str
    classnames: list[str]
    templates: list[str]
    prompts: np.ndarray  # (n_templates, n_classes, d_txt) float32, L2-normalised
    train: Split | None  # None only for a task loaded test_only (held-out tasks have no train split)
    test: Split | None
    validation: Split | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> Split:
        """The split called ``name`` (train, validation or test); a missing one is a FlytError."""
        if name not in SPLITS:
            raise FlytError(f"task {self.name}: unknown split {name!r} (one of {', '.join(SPLITS)})")
        data = getattr(self, name)
        if data is None:
            raise FlytError(f"task {self.name}: has no {name} split")
        return data


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FlytError(f"{path}: missing file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise FlytError(f"{path}: file is empty")
    return lines


def _integer_labels(column, path: Path, name: str = "label", what: str = "class index") -> np.ndarray:
    """An index column (``label``; prompts' ``template_index`` / ``class_index``) as int64. Integer
    columns pass; a float column passes only where every value is a whole number (2.0 is label 2: pandas
    writes integer labels as floats next to a null), else the first fractional or non-finite row is named
    (never truncated); any other type (strings, booleans) is refused."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_integer(kind):
        return column.to_numpy().astype(np.int64)
    if not pa.types.is_floating(kind):
        raise FlytError(f"{path}: column '{name}' must hold integer {what[:-2]}ices, got {kind}")
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) >= 2.0**62))
    if bad.size:
        r = int(bad[0])
        raise FlytError(f"{path}: row {r}: {name} {values[r]:g} is not an integer {what}")
    return values.astype(np.int64)


def _read_split(path: Path, num_classes: int, image_dim: int | None) -> Split:
    table = read_table(path, ["image_embedding", "label"])
    if table.num_rows == 0:
        raise FlytError(f"{path}: split has no rows")
    images = l2_normalise(embedding_matrix(table, IMAGE, str(path), image_dim))
    labels_col = table.column("label")
    if labels_col.null_count:
        raise FlytError(f"{path}: column 'label' has nulls")
    labels = _integer_labels(labels_col, path)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        r = int(bad[0])
        raise FlytError(
            f"{path}: row {r}: label {labels[r]} out of range for {num_classes} classes in {CLASSNAMES}"
        )
    return Split(images, labels)


def split_images(directory, split: str, image_dim: int | None, purpose: str) -> np.ndarray:
    """A task split's image embeddings only, unit-normalised float32 (n, d): what the pool-side scorers
    compare the pool with (training images for NormSim and friends, test images for decontamination).
    ``purpose`` completes the missing-file line ("task training images")."""
    path = Path(directory) / f"{split}.parquet"
    if not path.is_file():
        raise FlytError(f"{path}: missing file ({purpose})")
    m = embedding_matrix(read_table(path, [IMAGE]), IMAGE, str(path))
    if len(m) == 0:
        raise FlytError(f"{path}: split has no rows")
    if image_dim is not None and m.shape[1] != image_dim:
        raise FlytError(f"{path}: column '{IMAGE}' has dimension {m.shape[1]}, the pool's images have "
                        f"{image_dim} (embed tasks and pool with the same model)")
    return l2_normalise(m).astype(np.float32, copy=False)


def load_task(directory, image_dim: int | None = None, text_dim: int | None = None, test_only: bool = False) -> Task:
    """Read and validate one task directory. ``test_only``: read the prompts and ``test.parquet``
    only (it must exist); ``train`` is None and no train file is opened."""
    root = Path(directory)
    if not root.is_dir():
        raise FlytError(f"task directory {root} does not exist")
    classnames = _read_lines(root / CLASSNAMES)
    templates = _read_lines(root / TEMPLATES)
    for i, t in enumerate(templates):
        if "{c}" not in t:
            raise FlytError(f"{root / TEMPLATES}: line {i + 1}: template {t!r} has no '{{c}}' for the class name")
    prompts_path = root / PROMPTS
    if not prompts_path.is_file():
        raise FlytError(f"{prompts_path}: missing file (task without prompts; run 'flyt embed' on the task)")
    table = read_table(prompts_path, ["template_index", "class_index", TEXT])
    emb = l2_normalise(embedding_matrix(table, TEXT, str(prompts_path), text_dim))
    for name in ("template_index", "class_index"):
        if table.column(name).null_count:
            raise FlytError(f"{prompts_path}: column '{name}' has nulls")
    t_idx = _integer_labels(table.column("template_index"), prompts_path, "template_index", "template index")
    c_idx = _integer_labels(table.column("class_index"), prompts_path, "class_index", "class index")
    T, C = len(templates), len(classnames)
    bad = np.flatnonzero((t_idx < 0) | (t_idx >= T) | (c_idx < 0) | (c_idx >= C))
    if bad.size:
        r = int(bad[0])
        raise FlytError(f"{prompts_path}: row {r}: (template {t_idx[r]}, class {c_idx[r]}) out of range "
                        f"({T} templates, {C} classes)")
    prompts = np.full((T, C, emb.shape[1]), np.nan, dtype=np.float32)
    prompts[t_idx, c_idx] = emb
    missing = np.argwhere(np.isnan(prompts[:, :, 0]))
    if missing.size:
        t, c = missing[0]
        raise FlytError(f"{prompts_path}: no prompt embedding for template {t} and class {c} ({classnames[c]!r})")
    test_path = root / "test.parquet"
    if test_only:
        return Task(root.name, classnames, templates, prompts, None, _read_split(test_path, C, image_dim))
    train = _read_split(root / "train.parquet", C, image_dim)
    test = _read_split(test_path, C, train.images.shape[1]) if test_path.is_file() else None
    return Task(root.name, classnames, templates, prompts, train, test)


def write_task(directory, classnames: list[str], templates: list[str], prompts: np.ndarray, splits: dict,
               extra: dict | None = None) -> Path:
    """Write a task directory from embeddings: ``prompts`` (templates, classes, d_txt) and
    ``splits`` {name: (images (n, d_img), labels (n,))}; ``extra`` {split: {column: values}} adds
    columns after ``image_embedding`` and ``label`` (e.g. an image hash). Each file is written atomically."""
    import pyarrow as pa

    from flyt.io.arrays import fixed_size_list
    from flyt.io.atomic import write_parquet, write_text

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in splits.items():
        columns = {"image_embedding": fixed_size_list(np.asarray(images, np.float32)),
                   "label": pa.array(np.asarray(labels, np.int64))}
        columns.update((c, pa.array(v)) for c, v in (extra or {}).get(name, {}).items())
        write_parquet(pa.table(columns), root / f"{name}.parquet")
    T, C, _ = prompts.shape
    t_idx, c_idx = np.meshgrid(np.arange(T), np.arange(C), indexing="ij")
    write_parquet(
        pa.table({
            "template_index": pa.array(t_idx.ravel(), type=pa.int32()),
            "class_index": pa.array(c_idx.ravel(), type=pa.int32()),
            TEXT: fixed_size_list(np.asarray(prompts, np.float32).reshape(T * C, -1)),
        }),
        root / PROMPTS,
    )
    write_text("\n".join(templates) + "\n", root / TEMPLATES)
    write_text("\n".join(classnames) + "\n", root / CLASSNAMES)
    return root
