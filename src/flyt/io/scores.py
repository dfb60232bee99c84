"""Score directories: parquet shards with ``uid`` plus one float column per score.

One output shard per input pool shard, same stem, written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from flyt.io.atomic import write_parquet


def score_table(uids, columns: dict[str, np.ndarray]) -> pa.Table:
    """uid + float32 score columns (float32 is what DataComp metadata uses for scores)."""
    data = {"uid": pa.array(np.asarray(uids), type=pa.string())}
    for name, values in columns.items():
        data[name] = pa.array(np.asarray(values, dtype=np.float32))
    return pa.table(data)


def write_score_shard(out_dir, stem: str, uids, columns: dict[str, np.ndarray]) -> Path:
    path = Path(out_dir) / f"{stem}.parquet"
    write_parquet(score_table(uids, columns), path)
    return path
