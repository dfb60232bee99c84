"""Scores -> pretraining dataset: Soft Cap / Hard Cap sampling, top-k and threshold."""

from flyt.sample.api import sample, summarize
from flyt.sample.methods import SampleSpec
from flyt.sample.sources import ArrayScores, GeneratedScores, ParquetScores, score_sources
from flyt.sample.subset import write_subset

__all__ = ["sample", "summarize", "SampleSpec", "ArrayScores", "GeneratedScores", "ParquetScores", "score_sources", "write_subset"]
