"""Scoring throughput on DataComp-shaped shards (issue 4).

Measures, on this machine:
  1. raw sequential disk read of the npz files vs the DataComp npz reader (l14 pair, row batches),
     both from a cold page cache for those files (posix_fadvise DONTNEED), and warm;
  2. torch float32 matmul FLOP/s (the machine's reference) and the FLYT SwiGLU head's achieved
     FLOP/s on 768+768-d inputs (d = h = 1536) as a fraction of it;
  3. end-to-end `flyt score` rows/s for the FLYT head (scorer.pt) on the DataComp shards;
  4. end-to-end rows/s for an M-FLYT mixer over 12 input score columns;
  5. negclip_loss rows/s at its defaults (10 reference batches of 1024, 768-d), for scale.

Run it under the shared benchmark lock:
    flock /tmp/flyt-bench.lock python benchmarks/score.py [--rows 200000] [--shards 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from flyt.io.datacomp import DataCompEmbeddings, write_datacomp_shard
from flyt.io.uids import random_uids
from flyt.models.checkpoint import load_scorer, save_scorer
from flyt.models.mixing import ScoreMixer
from flyt.models.scoring_head import SwiGLUScorer
from flyt.pipeline.score import score_pool
from flyt.scorers.clip import negclip_loss


def evict(paths) -> None:
    """Drop the files' pages from the page cache, so the next read comes from disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def make_datacomp(root: Path, rows: int, shards: int) -> list[Path]:
    rng = np.random.default_rng(0)
    per = rows // shards
    for s in range(shards):
        arrays = {}
        for pair, d in (("b32", 512), ("l14", 768)):
            for kind in ("img", "txt"):
                x = rng.standard_normal((per, d), dtype=np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                arrays[f"{pair}_{kind}"] = x.astype(np.float16)
        table = pa.table({"uid": pa.array(random_uids(per, rng)), "text": pa.array(["a caption"] * per)})
        write_datacomp_shard(root, f"{s:08d}", table, arrays)
    return sorted(root.glob("*.npz"))


def raw_read(paths, chunk=16 << 20) -> tuple[float, int]:
    buf = bytearray(chunk)
    t0, total = time.perf_counter(), 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return time.perf_counter() - t0, total


def npz_read(paths, rows_per_shard, batch=8192) -> tuple[float, int]:
    t0, total = time.perf_counter(), 0
    for p in paths:
        with DataCompEmbeddings.open(p, "l14", rows_per_shard) as e:
            for start in range(0, rows_per_shard, batch):
                img, txt = e.read(start, start + batch)
                total += (img.size + txt.size) * 2  # bytes as stored (fp16)
    return time.perf_counter() - t0, total


def best_time(fn, reps: int = 7) -> float:
    """Fastest of ``reps`` calls after two warm-ups: the least disturbed by other processes."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_flops(n=8192, d=1536, h=1536) -> float:
    a, b = torch.randn(n, d), torch.randn(d, h)
    return 2 * n * d * h / best_time(lambda: a @ b)


def head_flops(n=8192, e=768) -> tuple[float, float]:
    model = SwiGLUScorer(e, e).eval()
    d, h = 2 * e, model.hidden_dim
    img, txt = torch.randn(n, e), torch.randn(n, e)
    with torch.no_grad():
        dt = best_time(lambda: model(img, txt))
    flops = n * (2 * d * h * 2 + 2 * h)  # W1 and W3 (d -> h), W2 (h -> 1); elementwise ops not counted
    return flops / dt, n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="DataComp-shaped rows (768+768 and 512+512 fp16)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--mflyt-rows", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(dir=os.environ.get("FLYT_BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        npz = make_datacomp(tmp / "pool", args.rows, args.shards)
        per = args.rows // args.shards
        size = sum(p.stat().st_size for p in npz)
        print(f"DataComp-shaped pool: {args.rows} rows in {args.shards} shards, npz {size / 2**20:.0f} MiB")

        for label, cold in (("cold", True), ("warm", False)):
            if cold:
                evict(npz)
            t_raw, b_raw = raw_read(npz)
            if cold:
                evict(npz)
            t_npz, b_npz = npz_read(npz, per)
            raw, rd = b_raw / t_raw, b_npz / t_npz
            print(f"[{label}] raw sequential read {raw / 2**20:8.0f} MiB/s | npz reader (l14 pair) "
                  f"{rd / 2**20:8.0f} MiB/s = {rd / raw:.2f} of raw | {per * args.shards / t_npz:,.0f} rows/s")

        mm = matmul_flops()  # best of 7 each: the machine is shared
        hf, hrows = head_flops()
        print(f"torch float32 matmul: {mm / 1e9:.1f} GFLOP/s; SwiGLU head (1536 -> 1536): {hf / 1e9:.1f} GFLOP/s "
              f"= {hf / mm:.2f} of matmul, {hrows:,.0f} rows/s (head alone)")

        rng = np.random.default_rng(2)
        n, k, b = 8192, 10, 1024
        v, t = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in rng.standard_normal((2, n, 768), dtype=np.float32))
        rv, rt = (x / np.linalg.norm(x, axis=1, keepdims=True)
                  for x in rng.standard_normal((2, k * (b - 1), 768), dtype=np.float32))
        t0 = time.perf_counter()
        negclip_loss(v, t, rv, rt, k, 0.01)
        dt = time.perf_counter() - t0
        nf = 2 * (2 * n * 768 * k * (b - 1))
        print(f"negclip_loss ({k} batches of {b}, 768-d): {n / dt:,.0f} rows/s, its matmuls at "
              f"{nf / dt / 1e9:.1f} GFLOP/s = {nf / dt / mm:.2f} of matmul")

        torch.manual_seed(0)
        save_scorer(tmp / "flyt.pt", "flyt", "flyt_score", SwiGLUScorer(768, 768))
        evict(npz)
        s = score_pool(tmp / "pool", tmp / "s_flyt", [str(tmp / "flyt.pt")], workers=args.workers, progress=False)
        print(f"flyt score FLYT head, DataComp l14 (cold cache, workers={args.workers}): "
              f"{s.rows_per_second:,.0f} rows/s ({s.rows} rows, {s.seconds:.1f} s)")

        # M-FLYT over 12 input columns stored in plain parquet shards (uid + 12 float columns)
        rng = np.random.default_rng(1)
        cols = [f"s{k}" for k in range(12)]
        per_m = args.mflyt_rows // args.shards
        import pyarrow.parquet as pq

        (tmp / "mpool").mkdir()
        for sh in range(args.shards):
            data = {"uid": pa.array(random_uids(per_m, rng))}
            data.update({c: pa.array(rng.standard_normal(per_m, dtype=np.float32)) for c in cols})
            pq.write_table(pa.table(data), tmp / "mpool" / f"{sh:08d}.parquet")
        mixer = ScoreMixer(cols, np.zeros(12), np.ones(12))
        with torch.no_grad():
            mixer.linear.weight.normal_()
        save_scorer(tmp / "mflyt.pt", "mflyt", "mflyt_score", mixer)
        load_scorer(tmp / "mflyt.pt")
        s = score_pool(tmp / "mpool", tmp / "s_mflyt", [str(tmp / "mflyt.pt")], workers=args.workers, progress=False)
        print(f"flyt score M-FLYT (12 inputs, workers={args.workers}): {s.rows_per_second:,.0f} rows/s "
              f"({s.rows} rows, {s.seconds:.1f} s)")


if __name__ == "__main__":
    main()
