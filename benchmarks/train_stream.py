"""Streaming training (issue 11): peak memory against the buffer's stated bound, and steps/s against the
same rows held in memory.

Data (generated once, kept out of the repository): a DataComp-shaped metadata directory of ``--rows``
rows in ``--shards`` shards (``<stem>.parquet``: uid, text, two CLIP scores; ``<stem>.npz``, stored, not
compressed: ``l14_img``/``l14_txt`` 768-d and ``b32_img``/``b32_txt`` 512-d, fp16, unit rows), one
downstream task (768-d, ``--classes`` classes, 2 templates), a ``subset/`` directory linking the first
``--subset-shards`` shards (the rows that fit in memory) and a ``tiny/`` one-shard pool of 16,384 rows.

Contenders, interleaved in every round, each a fresh process under ``/usr/bin/time -v`` training
``--steps`` FLYT steps at the paper's sizes (upstream batch 4096, downstream 3072, l14, SwiGLU h = 1536):
- ``stream-full``: the whole pool streamed (``pool_buffer: auto`` streams it: its embeddings exceed 2 GiB),
  a 65,536-row buffer, 1,024-row blocks;
- ``stream-subset`` / ``memory-subset``: the subset's rows streamed (``pool_buffer: 65536``) / held in
  memory (``pool_buffer: auto`` with the 2 GiB limit raised in this process, so ``load_pool`` holds them);
- ``memory-tiny``: the tiny pool in memory: the process, torch, the task, the models and the step's
  working memory, with (almost) no pool: "the model" in the memory bound.

Step time = the ``seconds`` metrics.jsonl records per step (the upstream draw, stream reads included, and
the whole FLYT step); wall and CPU (user + system) are the process's, set-up and data loading included.

    python benchmarks/train_stream.py --dir /tmp/flyt-stream-bench [--rows 2000000 --shards 8 --steps 20 --rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TINY_ROWS = 16384


def generate(root: Path, rows: int, shards: int, subset_shards: int, classes: int) -> None:
    import pyarrow as pa

    from flyt.io.datacomp import write_datacomp_shard
    from flyt.io.tasks import write_task
    from flyt.io.uids import random_uids

    done = root / "generated.json"
    want = {"rows": rows, "shards": shards, "subset_shards": subset_shards, "classes": classes}
    if done.exists() and json.loads(done.read_text()) == want:
        return
    rng = np.random.default_rng(0)
    (root / "pool").mkdir(parents=True, exist_ok=True)

    def unit(n, d):
        x = rng.standard_normal((n, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def shard(directory: Path, stem: str, n: int) -> None:
        arrays = {}
        for pair, d in (("b32", 512), ("l14", 768)):
            img = unit(n, d)
            txt = img * rng.uniform(0, 1, (n, 1)).astype(np.float32) + unit(n, d)
            txt /= np.linalg.norm(txt, axis=1, keepdims=True)
            arrays[f"{pair}_img"], arrays[f"{pair}_txt"] = img.astype(np.float16), txt.astype(np.float16)
        table = pa.table({
            "uid": pa.array(random_uids(n, rng)),
            "text": pa.array([f"caption {i}" for i in range(n)]),
            "clip_b32_similarity_score": pa.array((arrays["b32_img"].astype(np.float32) * arrays["b32_txt"]).sum(1)),
            "clip_l14_similarity_score": pa.array((arrays["l14_img"].astype(np.float32) * arrays["l14_txt"]).sum(1)),
        })
        write_datacomp_shard(directory, stem, table, arrays)  # stored npz members: row ranges by pread

    for s, n in enumerate(np.diff(np.linspace(0, rows, shards + 1).astype(int))):
        print(f"generating shard {s + 1}/{shards} ({n} rows)", file=sys.stderr, flush=True)
        shard(root / "pool", f"{s:08d}", int(n))
    (root / "subset").mkdir(exist_ok=True)
    for s in range(subset_shards):
        for ext in ("parquet", "npz"):
            link = root / "subset" / f"{s:08d}.{ext}"
            if not link.exists():
                link.symlink_to(root / "pool" / f"{s:08d}.{ext}")
    (root / "tiny").mkdir(exist_ok=True)
    shard(root / "tiny", "00000000", TINY_ROWS)
    prompts = unit(2 * classes, 768).reshape(2, classes, 768)
    write_task(root / "task", [f"class {i}" for i in range(classes)], ["a {c}", "a photo of a {c}"], prompts,
               {"train": (unit(2 * 3072, 768), rng.integers(0, classes, 2 * 3072))})
    done.write_text(json.dumps(want))


def run_one(args) -> None:
    """One training run in this process (a contender)."""
    import flyt
    import flyt.training.upstream as upstream

    if args.in_memory:
        upstream.AUTO_MEMORY_BYTES = float("inf")  # hold any pool in memory: the comparison's baseline
    cfg = {"pool": args.pool, "pair": "l14", "tasks": [args.task], "out": args.out, "steps": args.steps,
           "upstream_batch": 4096, "downstream_batch": 3072, "warmup_steps": 2, "checkpoint_every": 10**6,
           "keep_checkpoint_every": 10**6, "pool_buffer": args.buffer}
    flyt.train(cfg, progress=False)


def parse_time_v(text: str) -> dict:
    def grab(label):
        m = re.search(rf"{re.escape(label)}: (.+)", text)
        return m.group(1).strip() if m else None

    wall = grab("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return {"max_rss_gib": int(grab("Maximum resident set size (kbytes)")) / 2**20, "wall_s": seconds,
            "cpu_s": float(grab("User time (seconds)")) + float(grab("System time (seconds)"))}


def contender(root: Path, name: str, steps: int) -> dict:
    pool, buffer, memory = {"stream-full": ("pool", "auto", False), "stream-subset": ("subset", "65536", False),
                            "memory-subset": ("subset", "auto", True), "memory-tiny": ("tiny", "auto", False)}[name]
    out = root / "runs" / f"{name}-{time.time_ns()}"
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--run", "--pool", str(root / pool), "--task", str(root / "task"),
           "--out", str(out), "--steps", str(steps), "--buffer", buffer] + (["--in-memory"] if memory else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    seconds = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    streamed = "stream" in __import__("torch").load(out / "checkpoints" / "latest.pt", weights_only=True)
    import shutil

    shutil.rmtree(out)
    return {"name": name, "streamed": streamed, "first_step_s": seconds[0], "steady_step_s": statistics.median(seconds[1:]),
            "mean_step_s": sum(seconds) / len(seconds), **parse_time_v(proc.stderr)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/flyt-stream-bench")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--subset-shards", type=int, default=2)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--contenders", nargs="+", default=["memory-subset", "stream-subset", "stream-full", "memory-tiny"])
    # one contender's run (internal)
    p.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pool"), p.add_argument("--task"), p.add_argument("--out"), p.add_argument("--buffer")
    p.add_argument("--in-memory", action="store_true")
    args = p.parse_args()
    if args.run:
        args.buffer = int(args.buffer) if args.buffer.isdigit() else args.buffer
        return run_one(args)

    root = Path(args.dir)
    generate(root, args.rows, args.shards, args.subset_shards, args.classes)
    print(json.dumps({"threads": os.cpu_count(), "rows": args.rows, "subset_rows": int(args.rows * args.subset_shards / args.shards),
                      "steps": args.steps}), flush=True)
    results = []
    for r in range(args.rounds):
        for name in args.contenders:
            res = contender(root, name, args.steps) | {"round": r + 1}
            results.append(res)
            print(json.dumps(res), flush=True)
    by = {n: [x for x in results if x["name"] == n] for n in args.contenders}
    buffer_gib = 65536 * (768 + 768) * 4 / 2**30
    block_gib = 2 * 1024 * (768 + 768) * 4 / 2**30
    summary = {"buffer_bound_gib": buffer_gib, "block_gib": block_gib}
    for n, rs in by.items():
        summary[n] = {"steps_per_s_steady": 1 / statistics.median(x["steady_step_s"] for x in rs),
                      "max_rss_gib": max(x["max_rss_gib"] for x in rs)}
    if "memory-tiny" in by:
        model = summary["memory-tiny"]["max_rss_gib"]
        summary["bound_gib"] = model + buffer_gib + block_gib
    if "memory-subset" in by and "stream-subset" in by:
        pairs = [(m["steady_step_s"], s["steady_step_s"]) for m, s in zip(by["memory-subset"], by["stream-subset"])]
        summary["stream_over_memory_step_time"] = [s / m for m, s in pairs]
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
