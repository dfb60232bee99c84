"""Benchmark: Soft Cap Sampling at pool scale vs the authors' batched procedure.

Each measurement runs in a fresh subprocess; peak memory is the largest sum of resident memory
of that process and its workers, polled every 50 ms (so short spikes can be missed).

    flock /tmp/flyt-bench.lock python benchmarks/sample.py --rows 12800000 128000000
    flock /tmp/flyt-bench.lock python benchmarks/sample.py --rows 12800000 --parquet

Scores are float32 N(0, 1) with random 128-bit uids, generated per shard inside the workers
(in-memory sources) or written once to parquet shards (--parquet) and read back by the CLI path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class PeakMemory:
    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _sources(rows: int, shard_rows: int, seed: int):
    from flyt.sampling import GeneratedScores

    n_shards = math.ceil(rows / shard_rows)
    return [GeneratedScores(seed, i, min(shard_rows, rows - i * shard_rows)) for i in range(n_shards)]


def one_race(args) -> dict:
    """SCS with the clock race: select + write the subset."""
    from flyt.io.subsets import write_subset_chunks
    from flyt.sampling import SampleSpec, sample, score_sources, summarize

    total = args.total or args.rows
    spec = SampleSpec("scs", total=total, penalty=args.penalty, seed=args.seed)
    sources = score_sources(args.parquet_dir, "score") if args.parquet_dir else _sources(args.rows, args.shard_rows, args.seed)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            spill = Path(tmp) / "spill"
            spill.mkdir()
            result = sample(spec, sources, workers=args.workers, max_memory=args.max_memory, spill_dir=str(spill))
            t1 = time.perf_counter()
            out = Path(tmp) / "subset.npy"
            summary = summarize(spec, result)
            write_subset_chunks(out, result.chunks, result.total, summary)
            t2 = time.perf_counter()
        rows, ordered = verify_subset(out) if args.verify else (None, None)
    return {"select_s": t1 - t0, "write_s": t2 - t1, "total_s": t2 - t0, "peak_gb": mem.peak / 2**30,
            "total": summary["total"], "unique": summary["unique"], "max_count": summary["max_count"],
            "spilled": type(result).__name__ == "SpilledSelection", "verified_rows": rows, "verified_sorted": ordered}


def verify_subset(path: Path, block: int = 1 << 24) -> tuple[int, bool]:
    """(rows, sorted) of a subset .npy, read in blocks (no memory map: its pages would count as resident)."""
    import numpy as np

    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        prev, ordered, rows = None, True, 0
        while True:
            a = np.fromfile(f, dtype=dtype, count=block)
            if not len(a):
                break
            if prev is not None:
                a_ = np.concatenate([prev, a])
            else:
                a_ = a
            hi, lo = a_["f0"], a_["f1"]
            ordered &= not bool(((hi[1:] < hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] < lo[:-1]))).any())
            rows += len(a)
            prev = a[-1:]
    return (rows if rows == shape[0] else -rows), ordered


def one_batched(args) -> dict:
    """The authors' procedure on the same pool, a few batches, extrapolated to the full draw."""
    import numpy as np

    from flyt.sampling.batched import batched_counts

    total = args.total or args.rows
    scores = np.concatenate([s.load()[1] for s in _sources(args.rows, args.shard_rows, args.seed)])
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        batched_counts(scores, total, args.batch, args.penalty, seed=args.seed, max_batches=args.batched_iters)
        per_batch = (time.perf_counter() - t0) / args.batched_iters
    batches = math.ceil(total / args.batch)
    return {"per_batch_s": per_batch, "batches": batches, "extrapolated_s": per_batch * batches, "peak_gb": mem.peak / 2**30}


def write_parquet_pool(rows: int, shard_rows: int, seed: int, directory: Path) -> None:
    import pyarrow as pa

    from flyt.io.atomic import write_parquet
    from flyt.io.uids import pairs_to_uids

    for i, s in enumerate(_sources(rows, shard_rows, seed)):
        pairs, scores = s.load()
        table = pa.table({"uid": pa.array(pairs_to_uids(pairs), pa.string()), "score": pa.array(scores.astype("float32"))})
        write_parquet(table, directory / f"shard-{i:05d}.parquet")


def _child(kind: str, args, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--rows", str(args_rows := extra[0])] + extra[1:]
    del args_rows
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{kind} run failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[12_800_000, 128_000_000])
    p.add_argument("--total", type=int, help="draws (default: = rows)")
    p.add_argument("--penalty", type=float, default=0.15)
    p.add_argument("--shard-rows", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100_000)
    p.add_argument("--batched-iters", type=int, default=3)
    p.add_argument("--parquet", action="store_true", help="also a run reading parquet shards (first --rows value)")
    p.add_argument("--tmp", default=None, help="directory for temporary outputs (and spilled runs)")
    p.add_argument("--max-memory", type=int, default=None, help="bytes before the draw spills (default: flyt's 8 GiB)")
    p.add_argument("--verify", action="store_true", help="check the written .npy is sorted with T rows")
    p.add_argument("--no-batched", action="store_true", help="skip the authors' batched procedure")
    p.add_argument("--child", choices=["race", "batched"], help=argparse.SUPPRESS)
    p.add_argument("--parquet-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.rows = args.rows[0]
        print(json.dumps(one_race(args) if args.child == "race" else one_batched(args)))
        return
    common = ["--penalty", str(args.penalty), "--shard-rows", str(args.shard_rows), "--workers", str(args.workers),
              "--seed", str(args.seed), "--batch", str(args.batch), "--batched-iters", str(args.batched_iters)]
    if args.total:
        common += ["--total", str(args.total)]
    if args.tmp:
        common += ["--tmp", args.tmp]
    if args.max_memory:
        common += ["--max-memory", str(args.max_memory)]
    if args.verify:
        common += ["--verify"]
    print(f"# SCS delta={args.penalty}, T=rows, shards of {args.shard_rows}, workers={args.workers}, cpus={os.cpu_count()}")
    for rows in args.rows:
        race = _child("race", args, [str(rows)] + common)
        print(f"rows={rows:>11,} race: select {race['select_s']:.1f} s + write {race['write_s']:.1f} s = "
              f"{race['total_s']:.1f} s, peak {race['peak_gb']:.2f} GB, unique {race['unique']:,}, max count {race['max_count']}"
              f"{', spilled' if race['spilled'] else ''}"
              + (f", verified: {race['verified_rows']:,} rows, sorted {race['verified_sorted']}" if args.verify else ""),
              flush=True)
        if args.no_batched:
            continue
        bat = _child("batched", args, [str(rows)] + common)
        print(f"rows={rows:>11,} batched b={args.batch:,}: {bat['per_batch_s']:.2f} s/batch x {bat['batches']} batches "
              f"= {bat['extrapolated_s']:.0f} s extrapolated (peak {bat['peak_gb']:.2f} GB); "
              f"ratio {bat['extrapolated_s'] / race['total_s']:.0f}x", flush=True)
    if args.parquet:
        rows = args.rows[0]
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            t0 = time.perf_counter()
            write_parquet_pool(rows, args.shard_rows, args.seed, Path(tmp))
            print(f"(wrote {rows:,} rows of parquet in {time.perf_counter() - t0:.0f} s)", flush=True)
            race = _child("race", args, [str(rows)] + common + ["--parquet-dir", tmp])
        print(f"rows={rows:>11,} race from parquet: select {race['select_s']:.1f} s + write {race['write_s']:.1f} s = "
              f"{race['total_s']:.1f} s, peak {race['peak_gb']:.2f} GB, unique {race['unique']:,}", flush=True)


if __name__ == "__main__":
    main()
