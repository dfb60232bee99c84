"""`flyt reshard` throughput versus a plain sequential tar read + write of the same bytes (issue 11).

Pool: a generated DataComp-layout directory (tests/_datacomp_helpers.py): ``--samples`` pairs in
``--tars`` webdataset tars, real JPEGs of 128..224 px (about 10-30 KB; ``--distinct`` different
images reused), ``.txt`` captions and ``.json`` with the uid; 2% of the metadata uids have no sample.

Measured, interleaved round by round so every contender sees the same machine state:
  - ``tarfile copy``: each input tar read member by member with ``tarfile`` and written to a new tar
    with ``tarfile`` (sequential, one process): the plain read + write of the same bytes;
  - ``raw copy``: each input tar's bytes copied in 1 MiB blocks (the I/O floor, no tar parsing);
  - ``reshard``: ``flyt.reshard`` of a subset holding every downloaded uid once, so it reads and writes
    the same samples as the copies (plus the missing 2%, reported), with ``--workers`` 1 and 2;
  - ``reshard scs``: a subset with SCS-like counts (a third dropped, some uids up to 8 copies; the
    output has about as many samples as the pool), workers 1.
Wall time and CPU time (this process and its children; for reshard, its own count, which includes
its fork-server workers' jobs) per run; throughput in output samples/s and MB/s (output bytes / wall
time); ratios are medians over rounds of the two runs' samples/s in the same round. Inputs are warm
in the page cache (the pool is far smaller than RAM).

    flock /tmp/flyt-bench.lock python benchmarks/reshard.py [--samples 20000] [--tars 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import flyt  # noqa: E402
from _datacomp_helpers import make_datacomp_dir, write_counts_subset  # noqa: E402


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def tarfile_copy(tars: list[Path], out: Path) -> int:
    out.mkdir(parents=True)
    samples = 0
    for p in tars:
        with tarfile.open(p, "r:") as src, tarfile.open(out / p.name, "w") as dst:
            for m in src:
                dst.addfile(m, src.extractfile(m))
                samples += m.name.endswith(".json")
    return samples


def raw_copy(tars: list[Path], out: Path) -> int:
    out.mkdir(parents=True)
    for p in tars:
        with open(p, "rb") as src, open(out / p.name, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return 0


def size_of(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("*.tar"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--tars", type=int, default=20)
    ap.add_argument("--distinct", type=int, default=1000, help="distinct JPEGs (encoding 20k takes minutes)")
    ap.add_argument("--samples-per-shard", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/flyt-reshard-bench")
    args = ap.parse_args()

    root = Path(args.dir)
    pool_dir = root / f"pool-{args.samples}-{args.tars}-{args.distinct}"
    if not (pool_dir / "ready.json").exists():
        shutil.rmtree(pool_dir, ignore_errors=True)
        t = time.perf_counter()
        dc = make_datacomp_dir(pool_dir, pairs=args.samples, tars=args.tars, absent=args.samples // 50, seed=0,
                               image_size=(128, 224), distinct_images=args.distinct, with_metadata=False)
        np.save(pool_dir / "uids.npy", dc.uids)
        (pool_dir / "ready.json").write_text(json.dumps({"seconds": time.perf_counter() - t}))
    uids = np.load(pool_dir / "uids.npy")
    tars = sorted((pool_dir / "shards").glob("*.tar"))
    in_bytes = sum(p.stat().st_size for p in tars)
    once = write_counts_subset(root / "once.npy", uids, np.ones(len(uids), dtype=np.int64))
    rng = np.random.default_rng(1)
    scs_counts = np.minimum(rng.geometric(0.45, len(uids)) - (rng.random(len(uids)) < 0.33), 8)
    scs_counts[rng.random(len(uids)) < 0.33] = 0
    scs = write_counts_subset(root / "scs.npy", uids, scs_counts)
    pattern = str(pool_dir / "shards" / f"{{00000000..{args.tars - 1:08d}}}.tar")

    def reshard(subset, workers):
        def run(out):
            r = flyt.reshard(subset=subset, shards=pattern, out=out, samples_per_shard=args.samples_per_shard, workers=workers)
            return r.samples, r.cpu_seconds  # its workers run under a fork server: not our children
        return run

    contenders = {
        "tarfile copy": lambda out: (tarfile_copy(tars, out), None),
        "raw copy": lambda out: (raw_copy(tars, out), None),
        "reshard, workers 1": reshard(once, 1),
        "reshard, workers 2": reshard(once, 2),
        "reshard scs, workers 1": reshard(scs, 1),
    }
    results: dict[str, list[dict]] = {k: [] for k in contenders}
    for r in range(args.rounds):
        for name, fn in contenders.items():
            out = root / "out"
            shutil.rmtree(out, ignore_errors=True)
            c0, t0 = cpu_seconds(), time.perf_counter()
            samples, cpu = fn(out)
            wall = time.perf_counter() - t0
            cpu = cpu_seconds() - c0 if cpu is None else cpu
            nbytes = size_of(out)
            results[name].append({"wall": wall, "cpu": cpu, "samples": samples, "bytes": nbytes})
            print(f"round {r}: {name:24s} {wall:6.2f} s wall {cpu:6.2f} s cpu  {samples} samples {nbytes / 1e6:.0f} MB", flush=True)
        shutil.rmtree(root / "out", ignore_errors=True)

    base_samples = results["tarfile copy"][0]["samples"]
    print(f"\npool: {len(tars)} tars, {base_samples} samples, {in_bytes / 1e6:.0f} MB "
          f"({in_bytes / base_samples / 1e3:.1f} KB per sample with headers); best of {args.rounds} interleaved rounds\n")
    print("| run | wall, best / median | CPU, best run | samples/s | MB/s | throughput / tarfile copy's | throughput / raw copy's |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def ratio(name: str, base: str) -> float:
        """Median over rounds of (samples/s of ``name``) / (samples/s of ``base``) in the same round."""
        return statistics.median(
            (a["samples"] or base_samples) / a["wall"] / (base_samples / b["wall"]) for a, b in zip(results[name], results[base])
        )

    for name, runs in results.items():
        best = min(runs, key=lambda x: x["wall"])
        samples = best["samples"] or base_samples
        print(f"| {name} | {best['wall']:.2f} / {statistics.median(x['wall'] for x in runs):.2f} s | {best['cpu']:.2f} s | "
              f"{samples / best['wall']:,.0f} | {best['bytes'] / 1e6 / best['wall']:,.0f} | "
              f"{ratio(name, 'tarfile copy'):.2f} | {ratio(name, 'raw copy'):.2f} |")

if __name__ == "__main__":
    main()
