"""Build the offline benchmark (assets, pool, tasks) and time every step; then time students.

    flock /tmp/flyt-bench.lock python benchmarks/bench_assets.py [--cache DIR] [--json OUT.json]

Prints the preparation time per step (as recorded in the cache markers when the step ran), the
embedding times, the pool composition, the task sizes, the disk size of the cache, and the time to
train + evaluate one student on the whole pool, with zero-shot accuracies for the unfiltered pool
and for the pool with swapped-caption/duplicate rows removed (ground truth, a sanity check).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()

    from flyt.bench.build import build_benchmark
    from flyt.bench.evaluate import evaluate_selection
    from flyt.bench.student import StudentConfig
    from flyt.encoders import get_encoder
    from flyt.io.cache import cache_dir
    from flyt.io.pool import load_pool
    from flyt.io.tasks import load_task

    t0 = time.perf_counter()
    summary = build_benchmark(get_encoder("offline"), args.cache, progress=True)
    summary["build_wall_s"] = round(time.perf_counter() - t0, 1)
    cache = cache_dir(args.cache)
    du = subprocess.run(["du", "-sh", str(cache)], capture_output=True, text=True).stdout.split()[0]
    parts = {p: subprocess.run(["du", "-sh", str(cache / p)], capture_output=True, text=True).stdout.split()[0]
             for p in ("root", "npm", "rendered", "embeddings", "bench")}
    summary["disk"] = {"total": du, **parts}

    out = summary["out"]
    t0 = time.perf_counter()
    pool = load_pool(f"{out}/pool")
    tasks = [load_task(f"{out}/tasks/{n}") for n in sorted(summary["tasks"])]
    meta = pq.read_table(f"{out}/pool", columns=["uid", "defect"])
    summary["load_s"] = round(time.perf_counter() - t0, 2)
    defect = dict(zip(meta.column("uid").to_pylist(), meta.column("defect").to_pylist()))
    config = StudentConfig()
    seeds = tuple(range(args.seeds))
    results = {}
    for name, keep in (
        ("all", lambda d: True),
        ("no_swapped_no_duplicate", lambda d: d not in ("swapped", "duplicate")),
        ("only_swapped", lambda d: d == "swapped"),
    ):
        sel = {u: 1 for u in pool.uids if keep(defect[u])}
        t0 = time.perf_counter()
        r = evaluate_selection(pool.image, pool.text, pool.uids, sel, tasks, config, seeds)
        r["seconds_per_student"] = round((time.perf_counter() - t0) / len(seeds), 2)
        results[name] = {k: r[k] for k in ("mean", "std", "selected", "seconds_per_student")}
    summary["students"] = {"config": config.__dict__, "seeds": list(seeds), "results": results}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
