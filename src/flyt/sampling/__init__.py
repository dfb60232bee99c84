"""Scores -> pretraining dataset: Soft Cap / Hard Cap sampling, top-k and threshold."""

from flyt.io.subsets import write_subset
from flyt.sampling.draw import sample, summarize
from flyt.sampling.methods import SampleSpec
from flyt.sampling.sources import ArrayScores, GeneratedScores, ParquetScores, score_sources

__all__ = ["sample", "summarize", "SampleSpec", "ArrayScores", "GeneratedScores", "ParquetScores", "score_sources", "write_subset"]
