"""dedup as a detector of the demo's injected exact copies, and why its AUC has a ceiling below 1.

    OMP_NUM_THREADS=1 python benchmarks/demo_dedup_auc.py DEMO_OUT

Needs a finished `flyt demo --out DEMO_OUT` (full mode, with its dedup scores). Scores the pool once more
with ``--dedup-embedding image+text`` into DEMO_OUT/dedup-imagetext/ and prints, per embedding: the AUC of
dedup_distance = 1 - dedup_nearest on the ``duplicate`` defect; the same with the originals of the copies
left out of the clean class (they are byte-identical to their copies, so no per-row score separates them);
the recall of the copies (dedup_nearest = 1); and the clean rows that are natural copies (same image bytes
as another row) the labels do not mark.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np

from flyt.bench.evaluate import defect_auc
from flyt.bench.protocol import pool_metadata
from flyt.io.pool import load_pool
from flyt.io.scores import ScoreDirs
from flyt.pipeline.demo import dedup_options, open_finished
from flyt.pipeline.score import score_pool


def main() -> None:
    demo = open_finished(Path(sys.argv[1]))
    pool = demo.bench_dir / "pool"
    raw = load_pool(pool)
    meta = pool_metadata(pool, raw.uids)
    defect = np.asarray(meta.column("defect").to_pylist())
    sha = meta.column("image_sha1").to_pylist()
    pair = [f"{h}\0{t}" for h, t in zip(sha, meta.column("text").to_pylist())]
    copied = {p for p, d in zip(pair, defect) if d == "duplicate"}
    original = np.array([p in copied for p in pair]) & (defect != "duplicate")
    shared = collections.Counter(sha)
    dirs = {"image": demo.score_dirs["dedup"], "image+text": demo.cfg.out / "dedup-imagetext"}
    options = dedup_options(len(raw))
    options.dedup_embedding = "image+text"
    score_pool(pool, dirs["image+text"], ["dedup"], options, progress=False)
    clean = defect == "none"
    for name, d in dirs.items():
        s = ScoreDirs([d]).join(raw.uids, ["dedup_nearest"], where=str(d))["dedup_nearest"]
        dist = 1.0 - s
        auc = defect_auc({"d": dist}, defect)["d"]["duplicate"]
        rest = ~original
        auc_rest = defect_auc({"d": dist[rest]}, defect[rest])["d"]["duplicate"]
        natural = clean & ~original & (s >= 0.9999)
        same_bytes = int(sum(shared[sha[i]] > 1 for i in np.flatnonzero(natural)))
        print(f"{name}: AUC {auc:.4f}; originals left out: {auc_rest:.4f}; copies found (nearest = 1): "
              f"{(s[defect == 'duplicate'] >= 0.9999).mean():.4f}; originals among clean rows {original[clean].mean():.4f}; "
              f"other clean rows at nearest >= 0.9999: {int(natural.sum())} of {int((clean & ~original).sum())} "
              f"({same_bytes} share their image bytes with another row)")


if __name__ == "__main__":
    main()
