"""``flyt reshard``: a subset (``.npy``, or the parts form of ``flyt sample --part-rows``: its directory
or manifest.json) + the pool's webdataset tars -> new training shards in which the copies of one uid are
spread apart. Either form is read through ``flyt.io.subsets.open_subset``: part by part, never whole.

Construction (metadata passes never touch image bytes; the data is read once and written once):

1. **Index** (parallel per input tar, resumable). Each tar's headers are scanned
   (``flyt.io.tars.scan_tar``; only the small ``.json`` members are read, for DataComp's ``uid``) and
   joined with the subset by binary search on its memory-mapped, sorted rows (part by part; a uid's copies
   may run across parts). The samples whose uid
   is in the subset are written to a small index ``.reshard-work/index/<hash of path>.npz``: uid pair,
   copy count c (the uid's run length in the subset), first subset row, position in the tar, member
   extensions, data offsets and sizes. An index is reused when the tar's path, size and mtime and
   the subset's checksum match.
2. **Count.** Inputs are identified and ordered by their resolved paths, never by the order of the
   pattern. The indexes' (subset row, count) columns give the copies found, T; a uid present in
   several tars is taken from the first (by path, then position) and counted once. The number of
   output shards is ``n_out = ceil(T / N)`` (N = ``--samples-per-shard``).
3. **Route** (one pass over the indexes, metadata only, bounded memory). Copy k (0 <= k < c) of a
   uid u goes to output shard ``(b + floor(k * n_out / c)) mod n_out`` with
   ``b = H(seed, u) mod n_out``, and gets the order key ``K(seed, u, k)``; H and K are seeded 64-bit
   hashes (splitmix64 finaliser over the uid's fingerprint, ``flyt.sampling.randomness``). Each copy's
   40-byte record (shard, k, key, uid, global sample id) is appended to the bucket file of its group
   of consecutive output shards (256 groups, one per shard when there are fewer, more when a bucket
   would pass ~64 MiB); the kept samples' member tables go to ``samples.bin`` / ``members.bin``
   (memory-mapped by pass 2). Records wait in a buffer of about 1M records (40 MB) before they are
   appended. Memory: that buffer, one index, and one bit per subset row (which uids were found; the
   subset itself is read in blocks).
4. **Write** (parallel per group, resumable). A group's records are sorted by
   (shard, key, uid, k); each output shard ``DIR/<8-digit number>.tar`` is written in that order by
   reading each sample's members with one seek + read from its input tar, the members renamed
   ``<uid>_<k>.<ext>`` (extensions kept: .jpg/.png/.webp, .txt, .json, ...), through
   ``flyt.io.tars.TarWriter`` (temporary name, then rename; fixed header metadata).

Invariants:
- Output shards hold exactly the subset's multiset minus the uids found in no (readable) tar.
- The c copies of a uid land in c different shards whenever c <= n_out, and at most
  ceil(c / n_out) in one shard otherwise (floor(k * n_out / c) takes c distinct values in
  [0, n_out) when c <= n_out, and each value at most ceil(c / n_out) times).
- A shard holds about N samples, not exactly: routing is by hash (per-shard counts in ``_stats.json``).
- The output bytes depend only on the subset, the input tars' contents and paths, the seed and N:
  not on the number of workers, the engine (local or Ray), or the order in which the pattern lists
  the inputs.
- ``DIR/_stats.json`` records the identity of the reshard (sha256 of the subset ``.npy`` file's bytes, or
  for the parts form the sha256 of its rows, checked against the manifest's in the same pass that checks
  the order; seed, N); a directory holding another reshard is refused. A killed run resumes: finished indexes,
  the route (``plan.json``) and finished shards (``done/``) are kept; they are valid only for the
  same inputs (paths, sizes, mtimes), so a changed input re-routes and rewrites every shard.
  ``.reshard-work`` is removed when a run ends with no failure.
- A damaged input tar is named; its samples count as missing, the other shards are still written,
  the run reports a failure (non-zero exit) and keeps ``.reshard-work`` so a rerun after the fix
  only re-indexes that tar.

On a Ray cluster the subset, the input tars and DIR must be on storage every node can read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flyt.errors import FlytError
from flyt.io.atomic import atomic_path, save_npy, write_json
from flyt.io.subsets import Subset, open_subset
from flyt.io.tars import TarWriter, read_at, sample_uids, scan_tar, stale_temporaries
from flyt.io.uids import UID_DTYPE, pairs_to_uids
from flyt.io.webdataset import list_tars
from flyt.sampling.randomness import fingerprint, mix

FORMAT = "flyt-reshard/1"
WORK = ".reshard-work"
STATS = "_stats.json"
MISSING = "_missing_uids.npy"
INLINE_MISSING = 1000  # more missing uids than this go to _missing_uids.npy only
SHARD_NAME = re.compile(r"^(\d{8,})\.tar$")

RECORD = np.dtype([("shard", "<u4"), ("k", "<u4"), ("key", "<u8"), ("f0", "<u8"), ("f1", "<u8"), ("sample", "<u8")])
SAMPLE = np.dtype([("tar", "<u4"), ("members", "<u4"), ("first", "<u8")])
MEMBER = np.dtype([("offset", "<i8"), ("size", "<i8"), ("ext", "<u4")])
MIN_GROUPS = 256
GROUP_BYTES = 64 << 20
ROUTE_BUFFER = 1 << 20  # records held before they are appended to the bucket files
OPEN_TARS = 64  # input tars a pass-2 worker keeps open

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_SALT_HOME = 0x2545F4914F6CDD1D
_SALT_ORDER = 0x6A09E667F3BCC909


# ----------------------------------------------------------------------------- hashes
def _seed_word(seed: int, salt: int) -> np.uint64:
    w = np.array([(seed * _GOLDEN + salt) & _MASK], dtype=np.uint64)
    return mix(w)[0]


def home_shards(pairs: np.ndarray, seed: int, n_out: int) -> np.ndarray:
    """b = H(seed, uid) mod n_out."""
    h = fingerprint(pairs) ^ _seed_word(seed, _SALT_HOME)
    return mix(h) % np.uint64(n_out)


def order_keys(pairs: np.ndarray, k: np.ndarray, seed: int) -> np.ndarray:
    """K(seed, uid, k): the order of copy k of uid inside its output shard."""
    h = fingerprint(pairs) ^ _seed_word(seed, _SALT_ORDER)
    h += (k.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN)
    return mix(h)


def copy_records(pairs: np.ndarray, counts: np.ndarray, samples: np.ndarray, seed: int, n_out: int) -> np.ndarray:
    """One record per copy: copy k of uid u (c copies) -> shard (b + floor(k n_out / c)) mod n_out."""
    if len(pairs) == 0:
        return np.empty(0, dtype=RECORD)
    c = counts.astype(np.int64)
    rep = np.repeat(np.arange(len(pairs)), c)
    k = np.arange(len(rep), dtype=np.int64) - np.repeat(np.cumsum(c) - c, c)
    b = home_shards(pairs, seed, n_out).astype(np.int64)
    rec = np.empty(len(rep), dtype=RECORD)
    rec["shard"] = (b[rep] + (k * n_out) // c[rep]) % n_out
    rec["k"] = k
    up = pairs[rep]
    rec["key"] = order_keys(up, k, seed)
    rec["f0"], rec["f1"] = up["f0"], up["f1"]
    rec["sample"] = samples[rep]
    return rec


# ----------------------------------------------------------------------------- identity
@dataclass(frozen=True)
class Identity:
    """What makes two reshards the same: the subset's bytes, the seed and N."""

    subset_sha256: str
    seed: int
    samples_per_shard: int

    def as_dict(self) -> dict:
        return {"subset_sha256": self.subset_sha256, "seed": self.seed, "samples_per_shard": self.samples_per_shard}

    def differs(self, other: dict) -> str | None:
        for name, value in self.as_dict().items():
            if other.get(name) != value:
                return f"{name} {other.get(name)!r} there, {value!r} here"
        return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FlytError(f"{path}: unreadable ({type(exc).__name__}: {exc}); not a flyt reshard, choose another --out") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FlytError(f"{path}: not written by flyt reshard; choose another --out")
    return data


def check_out_dir(out: Path, identity: Identity) -> dict | None:
    """Refuse a DIR that holds anything but this reshard; return its stats when it has some."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise FlytError(f"--out {out} is a file, not a directory")
    stats_path, ident_path = out / STATS, out / WORK / "identity.json"
    found = [p for p in (stats_path, ident_path) if p.is_file()]
    if not found:
        if any(out.iterdir()):
            raise FlytError(f"--out {out} is not empty and holds no flyt reshard; choose another directory")
        return None
    stats = None
    for p in found:
        data = _read_json(p)
        why = identity.differs(data)
        if why:
            raise FlytError(f"--out {out} already holds a different reshard ({why}); choose another directory or remove it")
        if p == stats_path:
            stats = data
    return stats


def inputs_digest(tars: list[tuple[str, int, int]]) -> str:
    return hashlib.sha256(json.dumps(tars).encode()).hexdigest()


# ----------------------------------------------------------------------------- pass 1: index
_SUBSETS: dict[str, Subset] = {}


def _subset(path: str) -> Subset:
    # Opened once per process (validated once by the driver); memory-mapped pages are shared through the page cache.
    if path not in _SUBSETS:
        _SUBSETS.clear()
        _SUBSETS[path] = open_subset(path, check=False)
    return _SUBSETS[path]


@dataclass(frozen=True)
class IndexJob:
    tar: str
    size: int
    mtime_ns: int
    index: str
    subset: str
    subset_sha256: str


@dataclass
class IndexResult:
    tar: str
    error: str | None = None
    cpu: float = 0.0  # CPU seconds of the job
    pid: int = 0  # process that ran it (its CPU counts apart from the driver's when it is another)


def index_meta(job: IndexJob) -> dict:
    return {"tar": job.tar, "size": job.size, "mtime_ns": job.mtime_ns, "subset_sha256": job.subset_sha256}


def index_is_valid(job: IndexJob) -> bool:
    try:
        with np.load(job.index, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))["source"] == index_meta(job)
    except Exception:
        return False


def index_tar(job: IndexJob) -> IndexResult:
    """Scan one input tar and write its index (see module doc, step 1). Never raises."""
    res = IndexResult(job.tar, pid=os.getpid())
    c0 = time.process_time()
    try:
        samples = scan_tar(job.tar)
        with open(job.tar, "rb", buffering=0) as f:
            pairs, has_uid = sample_uids(samples, f, job.tar)
        st = os.stat(job.tar)
        if (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns):
            raise FlytError(f"{job.tar}: changed while being indexed; rerun")
        lo, count = _subset(job.subset).locate(pairs)
        rows = np.flatnonzero(has_uid & (count > 0))
        kept = [samples[i] for i in rows]
        exts = sorted({e for s in kept for e in s.exts})
        code = {e: i for i, e in enumerate(exts)}
        n_members = np.fromiter((len(s.exts) for s in kept), dtype=np.int64, count=len(kept))
        meta = {"source": index_meta(job), "samples": len(samples), "without_uid": int((~has_uid).sum())}
        with atomic_path(job.index) as tmp, open(tmp, "wb") as out:
            np.savez(
                out,
                meta=np.array(json.dumps(meta)),
                uid=pairs[rows],
                lo=lo[rows].astype(np.int64),
                count=count[rows].astype(np.int64),
                pos=rows.astype(np.int64),
                m_start=np.concatenate([[0], np.cumsum(n_members)]).astype(np.int64),
                m_offset=np.array([o for s in kept for o in s.offsets], dtype=np.int64),
                m_size=np.array([z for s in kept for z in s.sizes], dtype=np.int64),
                m_ext=np.array([code[e] for s in kept for e in s.exts], dtype=np.uint32),
                exts=np.array(exts, dtype=str),
            )
    except FlytError as exc:
        res.error = str(exc)
    except Exception as exc:  # an unexpected file problem: only this tar fails
        res.error = f"{job.tar}: {type(exc).__name__}: {exc}"
    res.cpu = time.process_time() - c0
    return res


# ----------------------------------------------------------------------------- passes 2-3: count, route
@dataclass
class Counted:
    total: int  # copies found (after dropping repeated uids)
    dropped: dict  # tar position -> index rows whose uid an earlier tar already gave
    taken: "Bits"  # per subset row: set at the first row of every found uid
    samples: int  # samples in the readable tars
    without_uid: int
    duplicates: int


class Bits:
    """One bit per subset row (1.6 GB at DataComp xlarge's 12.8B rows, where a bool array took 12.8 GB)."""

    def __init__(self, n: int):
        self.n = n
        self.words = np.zeros((n + 7) // 8, dtype=np.uint8)

    def get(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return ((self.words[rows >> 3] >> (rows & 7)) & 1).astype(bool)

    def set(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        np.bitwise_or.at(self.words, rows >> 3, np.left_shift(1, rows & 7).astype(np.uint8))

    def span(self, start: int, n: int) -> np.ndarray:
        """Rows [start, start + n) as booleans."""
        if n <= 0:
            return np.zeros(0, dtype=bool)
        bits = np.unpackbits(self.words[start >> 3 : ((start + n - 1) >> 3) + 1], bitorder="little")
        return bits[start & 7 : (start & 7) + n].astype(bool)


def count_found(indexes: list[str], n_subset: int) -> Counted:
    taken = Bits(n_subset)
    total = samples = without_uid = duplicates = 0
    dropped = {}
    for t, path in enumerate(indexes):
        with np.load(path, allow_pickle=False) as z:
            lo, count = z["lo"], z["count"]
            meta = json.loads(str(z["meta"]))
        samples += meta["samples"]
        without_uid += meta["without_uid"]
        first = np.zeros(len(lo), dtype=bool)
        first[np.unique(lo, return_index=True)[1]] = True  # a uid twice in one tar: its first sample
        fresh = first & ~taken.get(lo)
        taken.set(lo[fresh])
        if not fresh.all():
            dropped[t] = np.flatnonzero(~fresh)
            duplicates += len(dropped[t])
        total += int(count[fresh].sum())
    return Counted(total, dropped, taken, samples, without_uid, duplicates)


def group_bounds(n_out: int, total: int) -> list[int]:
    """First shard of each group of consecutive output shards (plus n_out at the end)."""
    if n_out == 0:
        return [0]
    groups = min(n_out, max(MIN_GROUPS, math.ceil(total * RECORD.itemsize / GROUP_BYTES)))
    return [g * n_out // groups for g in range(groups + 1)]


def _bucket(work: Path, g: int) -> Path:
    return work / "buckets" / f"{g:06d}.bin"


def route(work: Path, indexes: list[str], counted: Counted, seed: int, n_out: int, bounds: list[int]) -> tuple[list[int], list[str]]:
    """Step 3 of the module doc; returns (copies per output shard, extension vocabulary)."""
    (work / "buckets").mkdir(parents=True)
    group_of = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    shard_counts = np.zeros(n_out, dtype=np.int64)
    ext_codes: dict[str, int] = {}
    pending: list[np.ndarray] = []
    n_pending = n_samples = n_members = 0

    def flush() -> None:
        nonlocal pending, n_pending
        if not pending:
            return
        recs = np.concatenate(pending)
        g = group_of[recs["shard"]]
        order = np.argsort(g, kind="stable")
        recs, g = recs[order], g[order]
        cuts = np.flatnonzero(np.diff(g)) + 1
        for part in np.split(recs, cuts):
            if not len(part):
                continue
            with open(_bucket(work, int(group_of[part["shard"][0]])), "ab") as f:
                f.write(part.tobytes())
        pending, n_pending = [], 0

    with open(work / "samples.bin", "wb") as fs, open(work / "members.bin", "wb") as fm:
        for t, path in enumerate(indexes):
            with np.load(path, allow_pickle=False) as z:
                keep = np.ones(len(z["lo"]), dtype=bool)
                if t in counted.dropped:
                    keep[counted.dropped[t]] = False
                rows = np.flatnonzero(keep)
                m_start = z["m_start"]
                n_m = np.diff(m_start)[rows]
                member_rows = np.repeat(m_start[rows] - (np.cumsum(n_m) - n_m), n_m) + np.arange(int(n_m.sum()))
                local = np.array([ext_codes.setdefault(str(e), len(ext_codes)) for e in z["exts"]], dtype=np.uint32)
                members = np.empty(len(member_rows), dtype=MEMBER)
                members["offset"] = z["m_offset"][member_rows]
                members["size"] = z["m_size"][member_rows]
                members["ext"] = local[z["m_ext"][member_rows]] if len(member_rows) else 0
                samples = np.empty(len(rows), dtype=SAMPLE)
                samples["tar"] = t
                samples["members"] = n_m
                samples["first"] = n_members + np.cumsum(n_m) - n_m
                fs.write(samples.tobytes())
                fm.write(members.tobytes())
                ids = n_samples + np.arange(len(rows), dtype=np.uint64)
                recs = copy_records(z["uid"][rows], z["count"][rows], ids, seed, n_out)
            n_samples += len(rows)
            n_members += len(member_rows)
            shard_counts += np.bincount(recs["shard"], minlength=n_out)
            pending.append(recs)
            n_pending += len(recs)
            if n_pending >= ROUTE_BUFFER:
                flush()
        flush()
    vocab = [""] * len(ext_codes)
    for e, i in ext_codes.items():
        vocab[i] = e
    return shard_counts.tolist(), vocab


# ----------------------------------------------------------------------------- pass 4: write
@dataclass(frozen=True)
class GroupJob:
    work: str
    out: str
    group: int
    first: int  # shards [first, stop) of this group
    stop: int
    plan_hash: str


@dataclass
class GroupResult:
    group: int
    written: int = 0
    error: str | None = None
    cpu: float = 0.0
    pid: int = 0


def shard_path(out, shard: int) -> Path:
    return Path(out) / f"{shard:08d}.tar"


def _done(work: Path, shard: int) -> Path:
    return work / "done" / f"{shard:08d}"


def _table(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class _Inputs:
    """Input tars opened on demand (a few at a time), each checked to be the file that was indexed."""

    def __init__(self, tars: list):
        self.tars, self.open = tars, {}

    def get(self, t: int):
        f = self.open.pop(t, None)
        if f is None:
            path, size, mtime_ns = self.tars[t]
            st = os.stat(path)
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                raise FlytError(f"{path}: changed since it was indexed; rerun flyt reshard")
            if len(self.open) >= OPEN_TARS:
                oldest = next(iter(self.open))
                self.open.pop(oldest).close()
            f = open(path, "rb", buffering=0)
        self.open[t] = f  # most recently used last
        return f

    def close(self) -> None:
        for f in self.open.values():
            f.close()
        self.open.clear()


def write_group(job: GroupJob) -> GroupResult:
    """Write the unfinished output shards of one group (module doc, step 4). Never raises."""
    res = GroupResult(job.group, pid=os.getpid())
    c0 = time.process_time()
    work = Path(job.work)
    inputs = None
    try:
        plan = json.loads((work / "plan.json").read_text())
        if plan["hash"] != job.plan_hash:
            raise FlytError(f"{work / 'plan.json'}: changed during the run (two reshards into one directory?)")
        exts = plan["exts"]
        inputs = _Inputs(plan["tars"])
        samples = _table(work / "samples.bin", SAMPLE)
        members = _table(work / "members.bin", MEMBER)
        bucket = _bucket(work, job.group)
        recs = np.fromfile(bucket, dtype=RECORD) if bucket.exists() else np.empty(0, dtype=RECORD)
        recs = recs[np.lexsort((recs["k"], recs["f1"], recs["f0"], recs["key"], recs["shard"]))]
        cuts = np.searchsorted(recs["shard"], np.arange(job.first, job.stop + 1))
        for shard in range(job.first, job.stop):
            if _done(work, shard).exists():
                continue
            part = recs[cuts[shard - job.first] : cuts[shard - job.first + 1]]
            _write_shard(shard_path(job.out, shard), part, samples, members, exts, inputs, plan["tars"])
            _done(work, shard).touch()
            res.written += 1
    except FlytError as exc:
        res.error = str(exc)
    except Exception as exc:  # a bug or an unexpected file problem: only this group fails
        res.error = f"output shards {job.first}..{job.stop - 1}: {type(exc).__name__}: {exc}"
    finally:
        if inputs is not None:
            inputs.close()
        res.cpu = time.process_time() - c0
    return res


def _write_shard(path: Path, recs: np.ndarray, samples, members, exts: list[str], inputs: _Inputs, tars: list) -> None:
    smp = samples[recs["sample"]]
    n_m = smp["members"].astype(np.int64)
    rows = np.repeat(smp["first"].astype(np.int64) - (np.cumsum(n_m) - n_m), n_m) + np.arange(int(n_m.sum()))
    mem = members[rows]
    offsets, sizes, codes = mem["offset"].tolist(), mem["size"].tolist(), mem["ext"].tolist()
    names = [("." + e) if e else "" for e in exts]
    j = 0
    with TarWriter(path) as w:
        for t, m, f0, f1, k in zip(smp["tar"].tolist(), n_m.tolist(), recs["f0"].tolist(), recs["f1"].tolist(), recs["k"].tolist()):
            start, end = offsets[j], offsets[j + m - 1] + sizes[j + m - 1]
            data = memoryview(read_at(inputs.get(t), start, end - start, tars[t][0]))
            stem = f"{f0:016x}{f1:016x}_{k}"
            for i in range(j, j + m):
                a = offsets[i] - start
                w.add(stem + names[codes[i]], data[a : a + sizes[i]])
            j += m


# ----------------------------------------------------------------------------- driver
@dataclass
class ReshardSummary:
    out: Path
    shards: int = 0  # output shards of this reshard
    samples: int = 0  # copies in the output shards
    unique: int = 0  # distinct uids in the output
    subset_rows: int = 0
    subset_unique: int = 0
    missing_uids: int = 0  # uids of the subset found in no readable tar
    missing_copies: int = 0
    written: int = 0  # shards written by this run
    skipped: int = 0  # shards a previous run had finished
    bytes: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process plus the workers the engine ran elsewhere
    failures: list[tuple[str, str]] = field(default_factory=list)  # (input tar or shard group, error)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        fail = f", {len(self.failures)} FAILED" if self.failures else ""
        return (
            f"{self.samples} samples of {self.unique} uids in {self.shards} shards ({self.written} written, "
            f"{self.skipped} already done{fail}); {self.missing_uids} uids of the subset ({self.missing_copies} copies) "
            f"in no tar; {self.bytes / 2**20:,.1f} MiB in {self.seconds:.1f} s -> {self.out}"
        )


def _stat_inputs(patterns, out: Path) -> list[tuple[str, int, int]]:
    paths = sorted({str(Path(p).resolve()) for p in list_tars(patterns, "reshard --shards")})
    tars = []
    for p in paths:
        if Path(p).is_relative_to(out):
            raise FlytError(f"--shards: {p} lies inside --out {out}; write the new shards elsewhere")
        st = os.stat(p)
        tars.append((p, st.st_size, st.st_mtime_ns))
    return tars


def _already_done(out: Path, stats: dict | None, digest: str) -> bool:
    if not stats or not stats.get("complete") or stats.get("inputs_sha256") != digest or (out / WORK).exists():
        return False
    return all(shard_path(out, s).is_file() for s in range(stats["shards"]))


def _summary_from_stats(out: Path, stats: dict, t0: float) -> ReshardSummary:
    return ReshardSummary(
        out, stats["shards"], stats["samples"], stats["unique"], stats["subset_rows"], stats["subset_unique"],
        stats["missing"]["uids"], stats["missing"]["copies"], 0, stats["shards"], stats["bytes"], time.perf_counter() - t0,
    )


def reshard(subset, shards, out, samples_per_shard: int = 10_000, seed: int = 0, engine: str = "local", workers: int = 1) -> ReshardSummary:
    """Reshard the subset's samples from the input tars into ``out`` (see module doc)."""
    from flyt.engines import get_map_shards

    t0, c0, me = time.perf_counter(), time.process_time(), os.getpid()
    map_shards = get_map_shards(engine)
    out = Path(out).resolve()
    subset_path = Path(subset).resolve()
    sub = open_subset(subset_path, check=True, digest=True)  # one pass: order checked, identity hashed
    subset_path = sub.path  # a parts form named by its manifest.json: its directory
    identity = Identity(sub.sha256, int(seed), int(samples_per_shard))
    tars = _stat_inputs(shards, out)
    digest = inputs_digest(tars)
    stats = check_out_dir(out, identity)
    if _already_done(out, stats, digest):
        return _summary_from_stats(out, stats, t0)

    work = out / WORK
    if not (work / "identity.json").exists():  # first, so a killed run's directory is recognised as this reshard
        write_json({"format": FORMAT, **identity.as_dict()}, work / "identity.json")
    (work / "index").mkdir(exist_ok=True)
    for p in stale_temporaries(out) + stale_temporaries(work) + stale_temporaries(work / "index"):
        p.unlink()

    # 1. index
    jobs = [
        IndexJob(p, size, mtime, str(work / "index" / f"{hashlib.sha1(p.encode()).hexdigest()[:20]}.npz"), str(subset_path),
                 identity.subset_sha256)
        for p, size, mtime in tars
    ]
    failures, elsewhere = [], 0.0
    for r in map_shards(index_tar, [j for j in jobs if not index_is_valid(j)], workers):
        elsewhere += r.cpu if r.pid != me else 0.0
        if r.error:
            failures.append((r.tar, r.error))
    failed = {t for t, _ in failures}
    good = [(j, t) for j, t in zip(jobs, tars) if j.tar not in failed]

    # 2. count
    counted = count_found([j.index for j, _ in good], sub.rows)
    n_out = -(-counted.total // identity.samples_per_shard)
    bounds = group_bounds(n_out, counted.total)
    plan = {"identity": identity.as_dict(), "n_out": n_out, "bounds": bounds, "tars": [list(t) for _, t in good],
            "failed": sorted(failed)}
    plan_hash = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()

    # 3. route (unless a previous run routed the same plan)
    plan_path = work / "plan.json"
    try:
        previous = json.loads(plan_path.read_text())["hash"] if plan_path.is_file() else None
    except (OSError, ValueError, KeyError):
        previous = None
    if previous != plan_hash:
        for name in ("buckets", "done"):
            shutil.rmtree(work / name, ignore_errors=True)
        plan_path.unlink(missing_ok=True)
        shard_counts, exts = route(work, [j.index for j, _ in good], counted, identity.seed, n_out, bounds)
        write_json({**plan, "hash": plan_hash, "shard_counts": shard_counts, "exts": exts}, plan_path)
    saved = json.loads(plan_path.read_text())
    (work / "done").mkdir(exist_ok=True)
    for p in out.glob("*.tar"):  # shards of an earlier plan beyond this one's last
        m = SHARD_NAME.match(p.name)
        if m and int(m.group(1)) >= n_out:
            p.unlink()

    # 4. write
    groups = [GroupJob(str(work), str(out), g, bounds[g], bounds[g + 1], plan_hash) for g in range(len(bounds) - 1)]
    todo = [g for g in groups if not all(_done(work, s).exists() for s in range(g.first, g.stop))]
    skipped = sum(_done(work, s).exists() for s in range(n_out))
    written = 0
    for r in map_shards(write_group, todo, workers):
        elsewhere += r.cpu if r.pid != me else 0.0
        written += r.written
        if r.error:
            failures.append((f"output shards {groups[r.group].first}..{groups[r.group].stop - 1}", r.error))

    summary = _finish(out, work, sub, subset_path, identity, digest, counted, saved, failures, len(tars))
    summary.written, summary.skipped = written, skipped
    summary.seconds = time.perf_counter() - t0
    summary.cpu_seconds = time.process_time() - c0 + elsewhere
    return summary


def _missing(sub: Subset, taken: np.ndarray) -> tuple[np.ndarray, int]:
    """(unique uids of the subset not found, number of unique uids in the subset), block by block."""
    parts, unique, i, prev = [], 0, 0, None
    for a in sub.blocks():
        start = np.ones(len(a), dtype=bool)
        start[1:] = a[1:] != a[:-1]
        if prev is not None and len(a):
            start[0] = a[0] != prev
        unique += int(start.sum())
        parts.append(a[start & ~taken.span(i, len(a))])
        i += len(a)
        prev = a[-1] if len(a) else prev
    return (np.concatenate(parts) if parts else np.empty(0, dtype=UID_DTYPE)), unique


def _finish(out, work, sub, subset_path, identity, digest, counted, plan, failures, n_inputs) -> ReshardSummary:
    missing, subset_unique = _missing(sub, counted.taken)
    complete = not failures
    missing_file = None
    if len(missing) > INLINE_MISSING:
        save_npy(missing, out / MISSING)
        missing_file = MISSING
    else:
        (out / MISSING).unlink(missing_ok=True)
    n_out = plan["n_out"]
    size = sum(shard_path(out, s).stat().st_size for s in range(n_out) if shard_path(out, s).is_file())
    stats = {
        "format": FORMAT,
        **identity.as_dict(),
        "subset_checksum": ("sha256 of the subset .npy file's bytes" if sub.form == "npy"
                            else "sha256 of the subset's rows, parts concatenated (manifest.json's sha256)"),
        "subset": str(subset_path),
        "subset_rows": sub.rows,
        "subset_unique": subset_unique,
        "inputs": n_inputs,
        "inputs_sha256": digest,
        "input_samples": counted.samples,
        "input_samples_without_uid": counted.without_uid,
        "repeated_uids_dropped": counted.duplicates,
        "shards": n_out,
        "samples": int(sum(plan["shard_counts"])),
        "unique": subset_unique - len(missing),
        "bytes": size,
        "shard_samples": plan["shard_counts"],
        "missing": {
            "uids": len(missing),
            "copies": sub.rows - counted.total,
            "list": pairs_to_uids(missing).tolist() if missing_file is None else None,
            "file": missing_file,
        },
        "failed": [{"what": w, "error": e} for w, e in failures],
        "complete": complete,
    }
    write_json(stats, out / STATS)
    if complete:
        shutil.rmtree(work)
    return ReshardSummary(out, n_out, stats["samples"], stats["unique"], sub.rows, subset_unique, len(missing),
                          stats["missing"]["copies"], bytes=size, failures=list(failures))
