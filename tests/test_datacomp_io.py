"""The DataComp npz reader: row ranges without loading whole arrays, stored and compressed members."""

import numpy as np
import pytest
from tests._score_helpers import make_datacomp_pool

from flyt.errors import FlytError
from flyt.io.datacomp import DataCompEmbeddings, NpyMember, datacomp_stems


@pytest.mark.parametrize("compress", [False, True])
def test_npy_member_reads_rows_and_takes(tmp_path, compress):
    root = make_datacomp_pool(tmp_path, shards=1, rows=37, compress=compress)
    npz = root / "00000000.npz"
    full = np.load(npz)["l14_img"]
    with NpyMember(npz, "l14_img") as m:
        assert m.shape == (37, 768) and m.dtype == np.float16
        assert np.array_equal(m.read(0, 10), full[0:10])
        assert np.array_equal(m.read(10, 37), full[10:37])
        assert np.array_equal(m.read(5, 8), full[5:8])  # backwards: compressed restarts the stream
        assert m.read(37, 40).shape == (0, 768)
        rows = np.array([30, 2, 2, 17, 0, 36])
        assert np.array_equal(m.take(rows), full[rows])


def test_stems_and_validation(tmp_path):
    root = make_datacomp_pool(tmp_path, shards=2, rows=5)
    assert datacomp_stems(root) == ["00000000", "00000001"]
    with pytest.raises(FlytError, match="missing npz key 'l15_img'"):
        NpyMember(root / "00000000.npz", "l15_img")
    with pytest.raises(FlytError, match="row-count mismatch"):
        DataCompEmbeddings.open(root / "00000000.npz", "l14", 6)
    with DataCompEmbeddings.open(root / "00000000.npz", "b32", 5) as e:
        img, txt = e.read(0, 5)
        assert img.shape == (5, 512) and img.dtype == np.float32
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(FlytError, match="bad.npz: unreadable npz"):
        NpyMember(tmp_path / "bad.npz", "l14_img")


def test_zip64_offsets(tmp_path):
    # np.savez writes zip64 extras for every member; the local-header offset math must skip them.
    a = np.arange(3 * 768, dtype=np.float16).reshape(3, 768)
    with open(tmp_path / "z.npz", "wb") as f:
        np.savez(f, l14_img=a, other=np.ones((2, 2)))
    with NpyMember(tmp_path / "z.npz", "l14_img") as m:
        assert np.array_equal(m.read(1, 3), a[1:3])
