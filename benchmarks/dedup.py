"""``flyt score --scorer dedup`` at pool scale (issue 14): time, peak memory, rows/s per stage, and how
well it finds planted duplicates.

The pool is synthetic and DataComp-shaped (``<stem>.parquet`` with uid + the planted group label,
``<stem>.npz`` with ``b32_img`` 512-d float16, stored), written shard by shard so memory stays bounded:
- fresh rows lie around one of ``--topics`` random centres (cosine ~0.7 to it, ~0.5 between rows of a
  topic, ~0 across topics: CLIP-like cluster structure);
- ``--dup-fraction`` of the rows copy one of ``rows / 64`` "popular" rows: half exactly, half with
  noise (cosine ~0.985 to it, ~0.97 between two noisy copies), so a popular row's copies are one true
  group spread over all shards.
``b32_txt`` is a deflated all-zero member (a few KB on disk instead of 13 GB at 12.8M rows): the image
embedding is what is deduplicated, the text member is only read (and decompressed) alongside.

Peak memory is sampled every 0.5 s over the process and all its descendants (the worker processes):
the largest sum of their resident sets. Precision and recall are over pairs of rows put in one group.

    nice -n 5 python benchmarks/dedup.py --rows 1280000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt.api.score import score
from flyt.io.atomic import write_parquet
from flyt.io.uids import random_uids
from flyt.scorers.registry import ScorerOptions

D = 512


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_npz(path: Path, image: np.ndarray) -> None:
    """``b32_img`` stored (read by offset), ``b32_txt`` zeros deflated (tiny)."""
    with zipfile.ZipFile(path, "w", allowZip64=True) as z:
        for key, arr, how in (("b32_img", image, zipfile.ZIP_STORED),
                              ("b32_txt", np.zeros_like(image), zipfile.ZIP_DEFLATED)):
            info = zipfile.ZipInfo(f"{key}.npy")
            info.compress_type = how
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr)


def generate(root: Path, rows: int, shard_rows: int, topics: int, dup_fraction: float, seed: int = 0) -> int:
    """Write the pool; returns the number of popular rows."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((topics, D), dtype=np.float32))
    n_pop = max(1, rows // 64)

    def fresh(n, r):
        x = centres[r.integers(0, topics, n)] + 1.02 / np.sqrt(D) * r.standard_normal((n, D), dtype=np.float32)
        return _unit(x)

    popular = fresh(n_pop, rng).astype(np.float16)
    root.mkdir(parents=True, exist_ok=True)
    for s, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        r = np.random.default_rng([seed, s])
        x = fresh(n, r)
        label = n_pop + start + np.arange(n, dtype=np.int64)
        u = r.random(n)
        exact, near = u < dup_fraction / 2, (u >= dup_fraction / 2) & (u < dup_fraction)
        src = r.integers(0, n_pop, n)
        x[exact] = popular[src[exact]].astype(np.float32)
        noisy = popular[src[near]].astype(np.float32) + 0.175 / np.sqrt(D) * r.standard_normal((int(near.sum()), D), dtype=np.float32)
        x[near] = _unit(noisy)
        label[exact | near] = src[exact | near]
        write_npz(root / f"{s:08d}.npz", x.astype(np.float16))
        write_parquet(pa.table({"uid": pa.array(random_uids(n, r)), "planted": pa.array(label)}), root / f"{s:08d}.parquet")
    return n_pop


class PeakRSS:
    """Largest total resident set of this process and its descendants, sampled every ``every`` s, and
    their CPU time (user + system, the last sample of each process: a process's final half second
    may be missed)."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu: dict[int, float] = {}

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    @staticmethod
    def _tree(root: int) -> set:
        parent = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, todo = {root}, [root]
        while todo:
            p = todo.pop()
            kids = [c for c, pp in parent.items() if pp == p and c not in tree]
            tree.update(kids)
            todo += kids
        return tree

    def _sample(self) -> None:
        total, tick = 0, os.sysconf("SC_CLK_TCK")
        for p in self._tree(os.getpid()):
            try:
                with open(f"/proc/{p}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                self._cpu[p] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            except (OSError, StopIteration, IndexError, ValueError):
                pass
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def pair_counts(keys: list[np.ndarray]) -> int:
    """Pairs of rows equal in every key array (sort, then count runs of equal keys)."""
    order = np.lexsort(keys[::-1])
    same = np.ones(len(order) - 1, dtype=bool)
    for k in keys:
        s = k[order]
        same &= s[1:] == s[:-1]
    sizes = np.diff(np.flatnonzero(np.r_[True, ~same, True]))
    return int((sizes * (sizes - 1) // 2).sum())


def evaluate(pool: Path, out: Path) -> dict:
    group, label = [], []
    for p in sorted(pool.glob("*.parquet")):
        t = pq.read_table(p, columns=["uid", "planted"])
        s = pq.read_table(out / p.name, columns=["uid", "dedup_group", "dedup_keep"])
        assert t.column("uid").equals(s.column("uid"))
        group.append(s.column("dedup_group").to_numpy())
        label.append(t.column("planted").to_numpy())
    group, label = np.concatenate(group), np.concatenate(label)
    tp, pred, true = pair_counts([group, label]), pair_counts([group]), pair_counts([label])
    return {"precision": tp / max(pred, 1), "recall": tp / max(true, 1), "groups": len(np.unique(group)),
            "true_groups": len(np.unique(label))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_280_000)
    ap.add_argument("--shard-rows", type=int, default=100_000)
    ap.add_argument("--topics", type=int, default=2048)
    ap.add_argument("--dup-fraction", type=float, default=0.2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clusters", type=int, default=ScorerOptions().dedup_clusters)
    ap.add_argument("--max-cluster", type=int, default=ScorerOptions().dedup_max_cluster)
    ap.add_argument("--threshold", type=float, default=ScorerOptions().dedup_threshold)
    ap.add_argument("--split", choices=["exact", "fast"], default=ScorerOptions().dedup_split)
    ap.add_argument("--dir", default=None, help="work directory, kept (its pool is reused when present; default: a "
                    "temporary one, removed at the end)")
    args = ap.parse_args()

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="flyt-dedup-bench-"))
    pool, out = root / "pool", root / "scores"
    try:
        t0 = time.perf_counter()
        if not pool.is_dir():
            generate(pool, args.rows, args.shard_rows, args.topics, args.dup_fraction)
        gen = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in pool.iterdir())
        print(f"pool: {args.rows:,} rows x {D}-d fp16 in {len(list(pool.glob('*.npz')))} shards, "
              f"{disk / 2**30:.2f} GiB, generated in {gen:.0f} s")
        shutil.rmtree(out, ignore_errors=True)
        opts = ScorerOptions(dedup_clusters=args.clusters, dedup_max_cluster=args.max_cluster, dedup_threshold=args.threshold,
                             dedup_split=args.split)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            result = score(pool=pool, out=out, scorers=["dedup"], pair="b32", workers=args.workers, options=opts,
                           progress=False)
            total = time.perf_counter() - t0
        print(f"dedup: {total:.0f} s = {total / 60:.1f} min end to end, {args.rows / total:,.0f} rows/s; "
              f"peak RSS (process + workers) {rss.peak / 2**30:.2f} GiB; CPU {rss.cpu_seconds:.0f} s "
              f"(user + system, process + workers)")
        staged = 0.0
        for s in result.stages:
            staged += s.seconds
            print(f"  {s.name:<24} {s.seconds:8.1f} s  {s.rows:>12,} rows  {s.rows_per_second:>12,.0f} rows/s")
        print(f"  {'write score shards':<24} {total - staged:8.1f} s  {args.rows:>12,} rows  "
              f"{args.rows / max(total - staged, 1e-9):>12,.0f} rows/s")
        q = evaluate(pool, out)
        print(f"planted duplicates: pair precision {q['precision']:.4f}, recall {q['recall']:.4f}; "
              f"{q['groups']:,} groups found, {q['true_groups']:,} planted")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
