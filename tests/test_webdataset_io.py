"""Webdataset shards are read strictly: a damaged header mid-shard fails by name instead of silently
dropping the rest of the shard (what tarfile does)."""

import tarfile

import pytest

from flyt.errors import FlytError
from flyt.io.webdataset import iter_samples, write_shard


def _shard(path, n=4):
    write_shard(path, [{"__key__": f"{i:04d}", "jpg": b"\xff\xd8" + bytes([i]) * 600, "txt": f"caption {i}"} for i in range(n)])
    return path


def test_all_samples_of_a_good_shard(tmp_path):
    samples = list(iter_samples(str(_shard(tmp_path / "a.tar"))))
    assert [s["__key__"] for s in samples] == ["0000", "0001", "0002", "0003"]
    assert samples[2]["txt"].read() == b"caption 2"


def test_damaged_header_mid_shard_is_named(tmp_path):
    path = _shard(tmp_path / "a.tar")
    with tarfile.open(path) as tar:
        third = tar.getmembers()[2]  # sample 0001's first member
    data = bytearray(path.read_bytes())
    data[third.offset + 100] ^= 0xFF  # inside the header: its checksum no longer matches
    path.write_bytes(bytes(data))
    with tarfile.open(path) as tar:  # what tarfile alone does: stops early, no error
        assert len(tar.getmembers()) < 8
    with pytest.raises(FlytError, match=r"a\.tar: unreadable webdataset shard \(.*byte"):
        list(iter_samples(str(path)))
