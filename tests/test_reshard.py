"""``flyt reshard`` and ``subset_stream`` on a generated DataComp-layout directory (real JPEG tars)."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import flyt
from _datacomp_helpers import make_datacomp_dir, read_members, write_counts_subset
from flyt.errors import FlytError
from flyt.io.tars import scan_tar
from flyt.io.uids import random_uids
from flyt.io.webdataset import iter_samples

N = 40  # samples per output shard: about a dozen shards


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A DataComp-layout directory and a subset over it: counts 0..3, one uid with 40 copies (more than
    the number of output shards), absent metadata uids and uids that are in no metadata at all."""
    root = tmp_path_factory.mktemp("datacomp")
    dc = make_datacomp_dir(root / "pool", pairs=300, tars=4, absent=20, seed=0)
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 4, len(dc.uids))
    counts[np.flatnonzero(np.isin(dc.uids, dc.in_tars))[0]] = 40
    strangers = random_uids(5, rng)
    uids = np.concatenate([dc.uids, strangers])
    counts = np.concatenate([counts, [1, 2, 1, 1, 3]])
    subset = write_counts_subset(root / "subset.npy", uids, counts)
    present = set(dc.in_tars.tolist())
    want = collections.Counter({u: int(c) for u, c in zip(uids.tolist(), counts.tolist()) if c > 0 and u in present})
    missing = {u for u, c in zip(uids.tolist(), counts.tolist()) if c > 0 and u not in present}
    originals = read_members(dc.tars)
    return dict(dc=dc, subset=subset, want=want, missing=missing, originals=originals, pattern=str(dc.shards / "{00000000..00000003}.tar"))


def read_out(out: Path) -> dict[str, list[tuple[str, dict]]]:
    """shard name -> [(key, {ext: bytes})] in file order, read with the standard reader."""
    shards = {}
    for p in sorted(out.glob("*.tar")):
        samples = []
        for s in iter_samples(str(p)):
            samples.append((s.pop("__key__"), {e: m.read() for e, m in s.items()}))
        shards[p.name] = samples
    return shards


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != "_stats.json"}


def cli(argv) -> int:
    from flyt.cli.main import main

    return main(["reshard", *map(str, argv)])


@pytest.fixture(scope="module")
def reference(pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    result = flyt.reshard(subset=pool["subset"], shards=pool["pattern"], out=out, samples_per_shard=N, seed=3)
    return out, result


# ----------------------------------------------------------------------------- content
def test_output_is_the_subset_multiset_minus_missing(pool, reference):
    out, result = reference
    shards = read_out(out)
    got = collections.Counter()
    for samples in shards.values():
        for key, members in samples:
            uid, k = key.split("_")
            assert json.loads(members["json"])["uid"] == uid
            assert members == pool["originals"][uid]  # every member, byte for byte, extensions kept
            got[uid] += 1
    assert got == pool["want"]
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["missing"]["uids"] == len(pool["missing"]) and set(stats["missing"]["list"]) == pool["missing"]
    assert stats["samples"] == result.samples == sum(pool["want"].values())
    assert stats["shard_samples"] == [len(shards[f"{s:08d}.tar"]) for s in range(stats["shards"])]
    assert stats["shards"] == -(-stats["samples"] // N) == len(shards)
    assert stats["seed"] == 3 and stats["samples_per_shard"] == N and stats["complete"]
    import hashlib

    assert stats["subset_sha256"] == hashlib.sha256(pool["subset"].read_bytes()).hexdigest()
    assert not (out / ".reshard-work").exists() and not list(out.glob(".*"))
    # copy keys are distinct: <uid>_<k>, k = 0..c-1
    keys = [key for samples in shards.values() for key, _ in samples]
    assert len(keys) == len(set(keys))
    assert {int(key.split("_")[1]) for key in keys if key.startswith(max(pool["want"], key=pool["want"].get))} == set(range(40))


def test_copies_spread_over_shards(pool, reference):
    out, _ = reference
    shards = read_out(out)
    n_out = len(shards)
    per_shard = collections.defaultdict(collections.Counter)
    for name, samples in shards.items():
        for key, _ in samples:
            per_shard[key.split("_")[0]][name] += 1
    for uid, c in pool["want"].items():
        if c <= n_out:
            assert max(per_shard[uid].values()) == 1, uid  # c copies in c different shards
        else:
            assert max(per_shard[uid].values()) <= -(-c // n_out) and len(per_shard[uid]) == n_out


def test_same_bytes_for_workers_engine_and_input_order(pool, reference, tmp_path):
    out, _ = reference
    expected = tree_bytes(out)
    reversed_inputs = [str(p) for p in reversed(pool["dc"].tars)]
    flyt.reshard(subset=pool["subset"], shards=reversed_inputs, out=tmp_path / "w2", samples_per_shard=N, seed=3, workers=2)
    assert tree_bytes(tmp_path / "w2") == expected
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one Ray for both parallel passes
    try:
        flyt.reshard(subset=pool["subset"], shards=pool["pattern"], out=tmp_path / "ray", samples_per_shard=N, seed=3, engine="ray",
                     workers=2)
    finally:
        ray.shutdown()
    assert tree_bytes(tmp_path / "ray") == expected


def test_uid_in_two_tars_is_taken_once_from_the_first_by_path(pool, reference, tmp_path):
    from flyt.io.webdataset import write_shard

    shards = tmp_path / "shards"
    shutil.copytree(pool["dc"].shards, shards)
    uid = next(iter(pool["want"]))
    clone = dict(pool["originals"][uid], jpg=b"not the same image")
    write_shard(shards / "00000004.tar", [{"__key__": "000040000", **clone}])
    tars = sorted(shards.glob("*.tar"))
    a = flyt.reshard(subset=pool["subset"], shards=[str(p) for p in tars], out=tmp_path / "a", samples_per_shard=N, seed=3)
    b = flyt.reshard(subset=pool["subset"], shards=[str(p) for p in reversed(tars)], out=tmp_path / "b", samples_per_shard=N, seed=3)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b") == tree_bytes(reference[0])
    assert a.samples == b.samples == sum(pool["want"].values())
    assert json.loads((tmp_path / "a" / "_stats.json").read_text())["repeated_uids_dropped"] == 1


def test_seed_changes_routing_and_order(pool, reference, tmp_path):
    out, _ = reference
    flyt.reshard(subset=pool["subset"], shards=pool["pattern"], out=tmp_path / "s4", samples_per_shard=N, seed=4)
    assert tree_bytes(tmp_path / "s4") != tree_bytes(out)


def test_rerun_is_nothing_to_do(pool, reference):
    out, _ = reference
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = flyt.reshard(subset=pool["subset"], shards=pool["pattern"], out=out, samples_per_shard=N, seed=3)
    assert result.written == 0 and result.skipped == result.shards
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


# ----------------------------------------------------------------------------- resume
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import flyt.io.tars as tars
    import flyt.pipeline.reshard as rs
    where, after = sys.argv[1], int(sys.argv[2])
    calls = [0]

    def killing(fn):
        def wrapped(*a, **k):
            calls[0] += 1
            if calls[0] > after:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*a, **k)
        return wrapped

    if where == "index":
        rs.scan_tar = killing(rs.scan_tar)
    elif where == "route":
        rs.ROUTE_BUFFER = 1
        rs.copy_records = killing(rs.copy_records)
    else:
        tars.TarWriter.add = killing(tars.TarWriter.add)
    rs.reshard(sys.argv[3], [sys.argv[4]], sys.argv[5], samples_per_shard=int(sys.argv[6]), seed=3)
    """
)


@pytest.mark.parametrize("where,after", [("index", 2), ("route", 2), ("write", 700)])
def test_sigkill_then_resume_gives_the_same_bytes(pool, reference, tmp_path, where, after):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", KILLER, where, str(after), str(pool["subset"]), pool["pattern"], str(out), str(N)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / ".reshard-work").is_dir()
    if where == "write":
        assert list(out.glob(".*.tmp")), "killed inside a shard: its temporary file is left"
        finished = len(list(out.glob("*.tar")))
        assert finished > 0
    result = flyt.reshard(subset=pool["subset"], shards=pool["pattern"], out=out, samples_per_shard=N, seed=3)
    if where == "write":
        assert result.skipped == finished and result.written == result.shards - finished
    assert tree_bytes(out) == tree_bytes(reference[0])
    assert not (out / ".reshard-work").exists() and not list(out.glob(".*"))


# ----------------------------------------------------------------------------- bad input
def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_subset_with_wrong_dtype(pool, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.arange(10, dtype=np.int64))
    assert cli(["--subset", bad, "--shards", pool["pattern"], "--out", tmp_path / "out"]) == 2
    assert "bad.npy" in one_error_line(capsys) and not (tmp_path / "out").exists()


def test_unsorted_subset(pool, tmp_path, capsys):
    arr = np.load(pool["subset"])[::-1].copy()
    np.save(tmp_path / "unsorted.npy", arr)
    assert cli(["--subset", tmp_path / "unsorted.npy", "--shards", pool["pattern"], "--out", tmp_path / "out"]) == 2
    assert "not sorted" in one_error_line(capsys) and not (tmp_path / "out").exists()


def test_pattern_matching_nothing(pool, tmp_path, capsys):
    assert cli(["--subset", pool["subset"], "--shards", tmp_path / "nothing" / "{000..003}.tar", "--out", tmp_path / "out"]) == 2
    assert "does not exist" in one_error_line(capsys) and not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    assert cli(["--subset", pool["subset"], "--shards", tmp_path / "empty", "--out", tmp_path / "out"]) == 2
    assert "matches no .tar" in one_error_line(capsys) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["header", "truncated"])
def test_corrupt_tar_in_the_middle(pool, reference, tmp_path, capsys, damage):
    shards = tmp_path / "shards"
    shutil.copytree(pool["dc"].shards, shards)
    victim = shards / "00000001.tar"
    good = victim.read_bytes()
    samples = scan_tar(victim)
    if damage == "header":  # garble the header of a member in the middle of the tar
        at = samples[len(samples) // 2].offsets[0] - 512
        victim.write_bytes(good[:at] + b"\x07" * 64 + good[at + 64 :])
    else:
        victim.write_bytes(good[: samples[len(samples) // 2].offsets[1] + 3])
    out = tmp_path / "out"
    pattern = str(shards / "{00000000..00000003}.tar")
    code = cli(["--subset", pool["subset"], "--shards", pattern, "--out", out, "--samples-per-shard", N, "--seed", 3])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "00000001.tar" in err[0] and "corrupt tar" in err[0], err
    stats = json.loads((out / "_stats.json").read_text())
    assert not stats["complete"] and "00000001.tar" in stats["failed"][0]["what"]
    lost = {json.loads(m)["uid"] for m in (s.meta for s in samples)} & set(pool["want"])
    got = collections.Counter(key.split("_")[0] for v in read_out(out).values() for key, _ in v)
    assert got == collections.Counter({u: c for u, c in pool["want"].items() if u not in lost})  # the others still written
    assert stats["missing"]["uids"] == len(pool["missing"]) + len(lost)
    # repaired: the rerun re-indexes that tar only and ends like a clean run
    victim.write_bytes(good)
    os.utime(victim)
    assert cli(["--subset", pool["subset"], "--shards", pattern, "--out", out, "--samples-per-shard", N, "--seed", 3]) == 0
    assert tree_bytes(out) == tree_bytes(reference[0])


def test_out_dir_holding_another_reshard(pool, reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    before = tree_bytes(out), (out / "_stats.json").read_bytes()
    for flags in (["--seed", 4, "--samples-per-shard", N], ["--seed", 3, "--samples-per-shard", N + 1]):
        assert cli(["--subset", pool["subset"], "--shards", pool["pattern"], "--out", out, *flags]) == 2
        assert "already holds a different reshard" in one_error_line(capsys)
    other = tmp_path / "other.npy"
    write_counts_subset(other, list(pool["want"]), [1] * len(pool["want"]))
    assert cli(["--subset", other, "--shards", pool["pattern"], "--out", out, "--seed", 3, "--samples-per-shard", N]) == 2
    assert "subset_sha256" in one_error_line(capsys)
    assert (tree_bytes(out), (out / "_stats.json").read_bytes()) == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    assert cli(["--subset", pool["subset"], "--shards", pool["pattern"], "--out", tmp_path / "junk"]) == 2
    assert "holds no flyt reshard" in one_error_line(capsys)


def test_bad_options(pool, tmp_path):
    for fields in ({"samples_per_shard": 0}, {"workers": 0}, {"seed": -1}, {"engine": "spark"}):
        with pytest.raises(FlytError):
            flyt.reshard(subset=pool["subset"], shards=pool["pattern"], out=tmp_path / "o", **fields)
    assert not (tmp_path / "o").exists()


def test_many_missing_uids_go_to_a_file(pool, tmp_path):
    rng = np.random.default_rng(3)
    uids = np.concatenate([np.array(list(pool["want"])), random_uids(1500, rng)])
    subset = write_counts_subset(tmp_path / "s.npy", uids, np.ones(len(uids), dtype=int))
    r = flyt.reshard(subset=subset, shards=pool["pattern"], out=tmp_path / "out", samples_per_shard=N)
    stats = json.loads((tmp_path / "out" / "_stats.json").read_text())
    assert r.missing_uids == 1500 and stats["missing"]["file"] == "_missing_uids.npy" and stats["missing"]["list"] is None
    from flyt.io.subsets import read_subset
    from flyt.io.uids import pairs_to_uids

    assert set(pairs_to_uids(read_subset(tmp_path / "out" / "_missing_uids.npy"))) == set(uids[-1500:].tolist())


# ----------------------------------------------------------------------------- subset_stream
def stream_uids(stream) -> list[str]:
    return [s["__key__"].split("_")[0] for s in stream]


def test_stream_yields_the_subset_multiset(pool):
    stream = flyt.subset_stream(pool["subset"], pool["pattern"], seed=0, buffer=16)
    samples = list(stream)
    assert collections.Counter(s["__key__"].split("_")[0] for s in samples) == pool["want"]
    assert 0 < stream.stats["peak_buffer"] <= 16 and stream.stats["yielded"] == len(samples)
    for s in samples[:20]:
        uid = s["__key__"].split("_")[0]
        assert {e: s[e] for e in ("jpg", "txt", "json")} == pool["originals"][uid]


def test_stream_order_is_seeded(pool):
    a = stream_uids(flyt.subset_stream(pool["subset"], pool["pattern"], seed=0, buffer=64))
    b = stream_uids(flyt.subset_stream(pool["subset"], pool["pattern"], seed=0, buffer=64))
    c = stream_uids(flyt.subset_stream(pool["subset"], pool["pattern"], seed=1, buffer=64))
    assert a == b and a != c and sorted(a) == sorted(c)
    stream = flyt.subset_stream(pool["subset"], pool["pattern"], seed=0, buffer=64)
    stream.set_epoch(1)
    assert stream_uids(stream) != a


def test_stream_splits_tars_between_readers(pool):
    parts = [stream_uids(flyt.subset_stream(pool["subset"], pool["pattern"], rank=r, world_size=2)) for r in range(2)]
    assert all(parts) and collections.Counter(parts[0]) + collections.Counter(parts[1]) == pool["want"]
    assert not set(parts[0]) & set(parts[1])


def test_stream_in_a_torch_dataloader(pool):
    torch = pytest.importorskip("torch")

    class Pairs(torch.utils.data.IterableDataset):
        def __init__(self, stream):
            self.stream = stream

        def __iter__(self):
            for s in self.stream:
                yield s["__key__"].split("_")[0]

    stream = flyt.subset_stream(pool["subset"], pool["pattern"], seed=0, buffer=32)
    loader = torch.utils.data.DataLoader(Pairs(stream), batch_size=None, num_workers=2)
    assert collections.Counter(loader) == pool["want"]  # each worker took its own tars: nothing twice


def test_stream_bad_input(pool, tmp_path):
    with pytest.raises(FlytError, match="buffer"):
        flyt.subset_stream(pool["subset"], pool["pattern"], buffer=0)
    np.save(tmp_path / "bad.npy", np.arange(3))
    with pytest.raises(FlytError, match="bad.npy"):
        flyt.subset_stream(tmp_path / "bad.npy", pool["pattern"])


# ----------------------------------------------------------------------------- the tar layer
def test_scanner_matches_tarfile_and_reads_pax_archives(tmp_path):
    import io

    from flyt.io.tars import TarWriter

    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):  # long non-ASCII names: pax / GNU records (ustar: the pool tars)
        path = tmp_path / f"f{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as t:
            for name, data in (("a/0001.jpg", b"x" * 700), ("a/0001.json", b'{"uid": 1}'), ("b/" + "é" * 60 + ".txt", b"hi"),
                               ("b/" + "é" * 60 + ".cls", b"3")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        samples = scan_tar(path)
        with tarfile.open(path) as t:
            expected = [(m.name, m.offset_data, m.size) for m in t if m.isfile()]
        got = [(s.key + "." + e, o, z) for s in samples for e, o, z in zip(s.exts, s.offsets, s.sizes)]
        assert got == expected and samples[0].meta == b'{"uid": 1}' and len(samples) == 2
    # the writer: same bytes as tarfile's USTAR for the same metadata, and atomic
    with TarWriter(tmp_path / "w.tar") as w:
        w.add("k_0.jpg", b"abc")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo("k_0.jpg")
        info.size, info.mtime, info.mode, info.uname, info.gname = 3, 0, 0o644, "", ""
        t.addfile(info, io.BytesIO(b"abc"))
    assert (tmp_path / "w.tar").read_bytes() == buf.getvalue()
    with pytest.raises(RuntimeError):
        with TarWriter(tmp_path / "never.tar") as w:
            w.add("k_0.jpg", b"abc")
            raise RuntimeError("boom")
    assert not (tmp_path / "never.tar").exists() and not list(tmp_path.glob(".*.tmp"))


def test_scanner_fails_where_tarfile_stops_silently(pool, tmp_path):
    src = pool["dc"].tars[0]
    good = src.read_bytes()
    samples = scan_tar(src)
    at = samples[10].offsets[0] - 512  # the header of the 11th sample's first member
    bad = tmp_path / "bad.tar"
    bad.write_bytes(good[:at] + b"\x01" * 512 + good[at + 512 :])
    with tarfile.open(bad) as t:
        assert len(t.getmembers()) == 30  # tarfile: the first 10 samples, and not a word about the rest
    with pytest.raises(FlytError, match=rf"bad.tar: corrupt tar at byte {at} \(bad header checksum\)"):
        scan_tar(bad)
    tail = tmp_path / "tail.tar"
    tail.write_bytes(good + b"junk")
    with pytest.raises(FlytError, match="after the end-of-archive"):
        scan_tar(tail)


def test_samples_without_json_use_the_content_uid(tmp_path):
    from _datacomp_helpers import jpegs
    from flyt.io.uids import pair_uid
    from flyt.io.webdataset import write_shard

    images = jpegs(5, np.random.default_rng(0))
    write_shard(tmp_path / "in" / "0.tar", [{"__key__": f"{i:04d}", "jpg": images[i], "txt": f"cap {i}"} for i in range(5)]
                + [{"__key__": "cls-only", "cls": "1"}])  # no uid at all: never kept, counted
    uids = [pair_uid(images[i], f"cap {i}") for i in range(5)]
    subset = write_counts_subset(tmp_path / "s.npy", uids, [1, 0, 2, 1, 1])
    r = flyt.reshard(subset=subset, shards=str(tmp_path / "in"), out=tmp_path / "out", samples_per_shard=2)
    got = collections.Counter(k.split("_")[0] for v in read_out(tmp_path / "out").values() for k, _ in v)
    assert got == collections.Counter({uids[0]: 1, uids[2]: 2, uids[3]: 1, uids[4]: 1}) and r.shards == 3
    assert json.loads((tmp_path / "out" / "_stats.json").read_text())["input_samples_without_uid"] == 1


def test_generated_datacomp_layout(pool):
    """The generator's metadata reads as a DataComp pool; its order differs from the tars'; some uids were never downloaded."""
    from flyt.io.pool import pool_shards

    dc = pool["dc"]
    shards = pool_shards(dc.metadata, "l14")
    meta_uids = np.concatenate([s.read_uids() for s in shards])
    assert sorted(meta_uids.tolist()) == sorted(dc.uids.tolist())
    for s in shards:
        for _, batch in s.iter_batches(64, True, False):
            assert batch.image.shape[1] == 768 and np.allclose(np.linalg.norm(batch.image, axis=1), 1, atol=1e-3)
    tar_uids = [json.loads(s.meta)["uid"] for t in dc.tars for s in scan_tar(t)]
    keys = [s.key for t in dc.tars for s in scan_tar(t)]
    assert sorted(tar_uids) == sorted(dc.in_tars.tolist()) and len(dc.absent) == 20
    assert not set(dc.absent) & set(tar_uids)
    assert tar_uids != [u for u in meta_uids.tolist() if u in set(tar_uids)]  # another order
    assert keys[:2] == ["000000000", "000000001"]  # renumbered like the downloader, not uids
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(pool["originals"][tar_uids[0]]["jpg"])).format == "JPEG"
