"""Caption heuristics (DataComp's basic filter ingredients): words, characters, non-Latin ratio.

Computed with Arrow string kernels (vectorised). A null caption counts as the empty string.
``caption_non_latin`` is the fraction of the caption's letters that are not in the Latin script
(0 for a caption without letters): a cheap proxy for "not English" that needs no language model.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flyt.errors import FlytError
from flyt.io.pool import Batch
from flyt.scorers.base import Scorer


def caption_stats(captions) -> dict[str, np.ndarray]:
    """Per caption: ``caption_words``, ``caption_chars`` and ``caption_non_latin`` (float32)."""
    arr = pa.array(captions, type=pa.string()) if not isinstance(captions, (pa.Array, pa.ChunkedArray)) else captions
    arr = pc.fill_null(arr.cast(pa.string()), "")

    def count(pattern):
        return pc.count_substring_regex(arr, pattern).to_numpy(zero_copy_only=False).astype(np.float64)

    words = count(r"\S+")
    letters = count(r"\p{L}")
    latin = count(r"\p{Latin}")
    chars = pc.utf8_length(arr).to_numpy(zero_copy_only=False).astype(np.float64)
    non_latin = np.divide(letters - latin, letters, out=np.zeros_like(letters), where=letters > 0)
    return {
        "caption_words": words.astype(np.float32),
        "caption_chars": chars.astype(np.float32),
        "caption_non_latin": non_latin.astype(np.float32),
    }


class CaptionStats(Scorer):
    """``caption``: three columns from the pool's ``text`` column."""

    name = "caption"
    needs_captions = True

    def output_columns(self) -> list[str]:
        return ["caption_words", "caption_chars", "caption_non_latin"]

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        if batch.captions is None:
            raise FlytError("caption: the pool has no 'text' column")
        return caption_stats(batch.captions)
