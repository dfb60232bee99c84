"""`flyt score` on bad input: one clear line, exit 2, nothing partial; failures stay per shard."""

import numpy as np
import pytest
from tests._score_helpers import make_datacomp_pool, make_flyt_pool, make_task

from flyt.cli.main import main


def run(capsys, *args):
    code = main(["score", "--no-progress", *map(str, args)])
    err = capsys.readouterr().err
    return code, err


def files(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _drop_row(s, a):
    a["l14_img"] = a["l14_img"][:-1]
    return a


def _drop_key(s, a):
    del a["l14_txt"]
    return a


def _wrong_dim(s, a):
    a["l14_img"] = a["b32_img"]
    return a


def _nan(s, a):
    a["l14_img"] = a["l14_img"].copy()
    a["l14_img"][7, 3] = np.nan
    return a


@pytest.mark.parametrize("corrupt, message", [
    (_drop_row, "00000000.npz: key 'l14_img' has 39 rows but 00000000.parquet has 40 (parquet/npz row-count mismatch)"),
    (_drop_key, "00000000.npz: missing npz key 'l14_txt' (have: b32_img, b32_txt, l14_img)"),
    (_wrong_dim, "00000000.npz: key 'l14_img' has dimension 512, expected 768 for pair l14"),
    (_nan, "00000000.npz: key 'l14_img' row 7 is not finite"),
])
def test_bad_datacomp_shard(tmp_path, capsys, corrupt, message):
    pool = make_datacomp_pool(tmp_path / "pool", shards=2, rows=40, arrays_fn=lambda s, a: corrupt(s, a) if s == 0 else a)
    code, err = run(capsys, "--pool", pool, "--out", tmp_path / "s", "--scorer", "clip_score", "--batch-rows", "16")
    assert code == 2
    assert message in err
    assert "1 of 2 shards failed (first: 00000000:" in err
    assert files(tmp_path / "s") == ["00000001.parquet"]  # the good shard is kept, nothing partial


def test_unreadable_and_nan_flyt_shards_do_not_lose_others(tmp_path, capsys):
    pool = make_flyt_pool(tmp_path / "pool", shards=3, rows=10)
    (pool / "shard001.parquet").write_bytes(b"PAR1 this is not parquet")
    code, err = run(capsys, "--pool", pool, "--out", tmp_path / "s", "--scorer", "clip_score", "--workers", "2")
    assert code == 2
    assert "shard shard001 failed" in err and "shard001.parquet: unreadable parquet shard" in err
    assert files(tmp_path / "s") == ["shard000.parquet", "shard002.parquet"]
    lines = [line for line in err.splitlines() if line.startswith("flyt score: error")]
    assert len(lines) == 1


def test_nan_in_flyt_shard(tmp_path, capsys):
    import pyarrow.parquet as pq

    pool = make_flyt_pool(tmp_path / "pool", shards=1, rows=10)
    t = pq.read_table(pool / "shard000.parquet")
    img = np.stack(t.column("image_embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    img[4, 0] = np.nan
    from flyt.io.arrays import fixed_size_list

    t = t.set_column(1, "image_embedding", fixed_size_list(img))
    pq.write_table(t, pool / "shard000.parquet")
    code, err = run(capsys, "--pool", pool, "--out", tmp_path / "s", "--scorer", "clip_score")
    assert code == 2 and "column 'image_embedding' row 4 is not finite" in err
    assert files(tmp_path / "s") == []


@pytest.mark.parametrize("args, message", [
    (["--scorer", "clip_scor"], "unknown scorer 'clip_scor'"),
    (["--scorer", "normsim_inf"], "scorer 'normsim_inf' needs downstream tasks: pass --tasks"),
    (["--scorer", "clip_score", "--workers", "0"], "option --workers must be >= 1"),
    (["--scorer", "negclip_loss", "--negclip-batches", "50"], "the pool has 20 rows, fewer than"),
    (["--scorer", "clip_score", "--pair", "b32", "--pool-is-out"], "is the pool directory"),
    (["--scorer", "missing/scorer.pt"], "scorer checkpoint missing/scorer.pt does not exist"),
])
def test_bad_options(tmp_path, capsys, args, message):
    pool = make_flyt_pool(tmp_path / "pool", shards=2, rows=10)
    out = pool if "--pool-is-out" in args else tmp_path / "s"
    args = [a for a in args if a != "--pool-is-out"]
    code, err = run(capsys, "--pool", pool, "--out", out, *args)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert files(tmp_path / "s") == []
    assert files(pool) == ["shard000.parquet", "shard001.parquet"]


def test_task_dimension_mismatch(tmp_path, capsys):
    pool = make_flyt_pool(tmp_path / "pool", shards=1, rows=10, dim=16)
    task = make_task(tmp_path / "task", dim=8)
    code, err = run(capsys, "--pool", pool, "--out", tmp_path / "s", "--scorer", "normsim_2", "--tasks", task)
    assert code == 2 and "train.parquet: column 'image_embedding' has dimension 8, the pool's images have 16" in err


def test_empty_pool(tmp_path, capsys):
    (tmp_path / "pool").mkdir()
    code, err = run(capsys, "--pool", tmp_path / "pool", "--out", tmp_path / "s", "--scorer", "clip_score")
    assert code == 2 and "has no .parquet shards (empty pool)" in err


def test_duplicate_uid_in_shard(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = make_flyt_pool(tmp_path / "pool", shards=1, rows=6)
    t = pq.read_table(pool / "shard000.parquet")
    uids = t.column("uid").to_pylist()
    uids[4] = uids[1]
    pq.write_table(t.set_column(0, "uid", pa.array(uids)), pool / "shard000.parquet")
    code, err = run(capsys, "--pool", pool, "--out", tmp_path / "s", "--scorer", "caption")
    assert code == 2 and f"duplicate uid {uids[1]} (rows 1 and 4)" in err
    assert files(tmp_path / "s") == []
