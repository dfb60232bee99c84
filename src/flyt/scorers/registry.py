"""Scorers by name: ``make_scorers(["clip_score", "run/scorer.pt", ...], options)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.scorers.base import Scorer


@dataclass
class ScorerOptions:
    """The knobs of the baseline scorers (CLI flags of ``flyt score``)."""

    negclip_batches: int = 10
    negclip_batch_size: int = 1024
    teacher_temperature: float = 0.01
    clusters: int = 1000
    kmeans_sample: int = 100_000
    classifier: str | None = None  # load a saved probe instead of fitting one
    save_classifier: str | None = None
    classifier_negatives: int = 20_000
    dedup_embedding: str = "image"  # image | image+text
    dedup_clusters: int = 1024  # k-means clusters (SemDeDup's k)
    dedup_threshold: float = 0.95  # rows with cosine >= this are linked (near duplicates)
    dedup_max_cluster: int = 4096  # larger clusters are split by k-means (bounds work and memory)
    dedup_sample: int = 50_000  # pool rows the k-means is fitted on
    dedup_hash: str = "auto"  # image-hash column linking exact copies: auto (sha256 if present), none, or a name
    dedup_spill: str | None = None  # directory for the pool pass's temporary files (default: inside --out)
    dedup_split: str = "exact"  # oversized clusters: exact (overlapping leaves, no pair lost) | fast (a partition)


def _clip(o):
    from flyt.scorers.clip import ClipScore

    return ClipScore()


def _negclip(o):
    from flyt.scorers.clip import NegClipLoss

    return NegClipLoss(o.negclip_batches, o.negclip_batch_size, o.teacher_temperature)


def _normsim(p):
    def make(o):
        from flyt.scorers.normsim import NormSim

        return NormSim(p)

    return make


def _classifier(o):
    from flyt.scorers.classifier import ClassifierScore

    return ClassifierScore(o.classifier, o.save_classifier, o.classifier_negatives)


def _image_based(o):
    from flyt.scorers.image_based import ImageBased

    return ImageBased(o.clusters, o.kmeans_sample)


def _dedup(o):
    from flyt.scorers.dedup import Dedup

    return Dedup(o.dedup_embedding, o.dedup_clusters, o.dedup_threshold, o.dedup_max_cluster, o.dedup_sample,
                 o.dedup_hash, o.dedup_spill, o.dedup_split)


def _contamination(o):
    from flyt.scorers.contamination import Contamination

    return Contamination()


def _caption(o):
    from flyt.scorers.caption import CaptionStats

    return CaptionStats()


SCORERS = {
    "clip_score": _clip,
    "negclip_loss": _negclip,
    "normsim_2": _normsim(2),
    "normsim_inf": _normsim(np.inf),
    "classifier": _classifier,
    "image_based": _image_based,
    "caption": _caption,
    "dedup": _dedup,
    "contamination": _contamination,
}

# Scorers that read the downstream tasks (the training images; contamination: the test images).
NEEDS_TASKS = {"normsim_2", "normsim_inf", "classifier", "image_based", "contamination"}


def make_scorer(spec: str, options: ScorerOptions | None = None) -> Scorer:
    """A scorer by registry name, or a trained FLYT/M-FLYT ``scorer.pt`` by path."""
    options = options or ScorerOptions()
    if spec in SCORERS:
        return SCORERS[spec](options)
    if spec.endswith(".pt") or Path(spec).is_file():
        from flyt.scorers.trained import TrainedScorer

        return TrainedScorer(spec)
    raise FlytError(f"option --scorer: unknown scorer {spec!r} (known: {', '.join(SCORERS)}; or a path to scorer.pt)")


def make_scorers(specs: list[str], options: ScorerOptions | None = None) -> list[Scorer]:
    """Scorers for all specs; rejects two scorers writing the same column."""
    scorers = [make_scorer(s, options) for s in specs]
    seen = {}
    for spec, sc in zip(specs, scorers):
        for col in sc.output_columns():
            if col in seen:
                raise FlytError(f"option --scorer: {spec!r} and {seen[col]!r} both write column '{col}'")
            seen[col] = spec
    return scorers
