"""The parts form of a subset (``flyt sample --part-rows``: sorted .npy parts + manifest.json) read by
``flyt reshard`` and ``subset_stream`` part by part: the same shards, bytes for bytes, and the same stream
as from the single .npy; the one reader (flyt.io.subsets.open_subset) locates uids whose copies run
across parts exactly as a binary search of the whole array does."""

from __future__ import annotations

import json

import numpy as np
import pytest

import flyt
import test_reshard
from flyt.errors import FlytError
from flyt.io import subsets
from flyt.io.subsets import open_subset, write_subset_chunks
from flyt.io.uids import UID_DTYPE
from test_reshard import N, tree_bytes

pool = test_reshard.pool  # the DataComp-layout pool, its subset and the single-file reshard, reused
reference = test_reshard.reference


def write_parts(single, directory, part_rows: int):
    """The single .npy's rows as parts of ``part_rows`` rows (what --part-rows writes)."""
    rows = np.load(single)
    pairs, counts = np.unique(rows, return_counts=True)
    write_subset_chunks(directory, lambda: iter([(pairs, counts)]), len(rows), {}, part_rows=part_rows)
    return directory


@pytest.fixture(scope="module")
def parts(pool, tmp_path_factory):
    # 7-row parts: the uid with 40 copies spans several parts, and many uids straddle a boundary.
    return write_parts(pool["subset"], tmp_path_factory.mktemp("parts") / "subset", 7)


def test_reshard_from_parts_gives_the_single_file_bytes(pool, reference, parts, tmp_path, monkeypatch):
    out, _ = reference
    # Never the whole subset as one array: the all-in-memory reader must not be used.
    monkeypatch.setattr(subsets, "read_subset", lambda *a, **k: pytest.fail("read_subset called"))
    for name, form in (("dir", parts), ("manifest", parts / "manifest.json")):
        result = flyt.reshard(subset=form, shards=pool["pattern"], out=tmp_path / name, samples_per_shard=N, seed=3)
        assert tree_bytes(tmp_path / name) == tree_bytes(out)
        stats = json.loads((tmp_path / name / "_stats.json").read_text())
        assert stats["subset_sha256"] == json.loads((parts / "manifest.json").read_text())["sha256"]
        assert stats["subset_rows"] == len(np.load(pool["subset"])) and result.missing_uids == len(pool["missing"])
    again = flyt.reshard(subset=parts / "manifest.json", shards=pool["pattern"], out=tmp_path / "dir", samples_per_shard=N, seed=3)
    assert again.written == 0 and again.skipped == again.shards  # the same identity: resumed, nothing to do


def test_changed_part_is_refused_by_its_manifest(pool, parts, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(parts, bad)
    part = bad / "part-00000.npy"
    rows = np.load(part)
    assert rows[0]["f1"] > 0
    rows[0]["f1"] -= np.uint64(1)  # still sorted (the smallest row got smaller), not the rows the manifest hashed
    np.save(part, rows)
    with pytest.raises(FlytError, match="manifest.json: the parts' rows do not match its sha256"):
        flyt.reshard(subset=bad, shards=pool["pattern"], out=tmp_path / "out", samples_per_shard=N)


def test_stream_from_parts_is_the_single_file_stream(pool, parts):
    for seed in (0, 1):
        one = [s["__key__"] for s in flyt.subset_stream(pool["subset"], pool["pattern"], seed=seed, buffer=16)]
        many = [s["__key__"] for s in flyt.subset_stream(parts, pool["pattern"], seed=seed, buffer=16)]
        assert many == one and len(one) == sum(pool["want"].values())


@pytest.mark.parametrize("part_rows", [1, 3, 50, 10**6])
def test_locate_across_parts_is_a_whole_binary_search(tmp_path, part_rows):
    rng = np.random.default_rng(part_rows)
    uniq = np.unique(rng.integers(0, 6, size=(300, 2)).astype(np.uint64).view(UID_DTYPE).ravel())
    counts = rng.integers(1, 9, len(uniq))
    whole = np.repeat(uniq, counts)
    write_subset_chunks(tmp_path / "p", lambda: iter([(uniq, counts)]), len(whole), {}, part_rows=part_rows)
    sub = open_subset(tmp_path / "p", digest=True)
    assert sub.form == "parts" and sub.rows == len(whole) and len(sub.parts) == -(-len(whole) // part_rows)
    blocks = list(sub.blocks(rows=2))
    assert max(map(len, blocks)) <= min(2, part_rows) and np.concatenate(blocks).tobytes() == whole.tobytes()
    queries = np.concatenate([uniq, np.array([(0, 0), (9, 9), (2, 7)], dtype=UID_DTYPE)])
    lo, count = sub.locate(queries)
    assert np.array_equal(lo, np.searchsorted(whole, queries, side="left"))
    assert np.array_equal(lo + count, np.searchsorted(whole, queries, side="right"))
    import hashlib

    assert sub.sha256 == hashlib.sha256(whole.tobytes()).hexdigest()
