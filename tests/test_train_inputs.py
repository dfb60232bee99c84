"""Bad input to `flyt train`: one clear line naming what is wrong, exit code 2, no run written."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flyt.cli.main import main
from flyt.io.arrays import fixed_size_list
from flyt.synthetic import PlantedWorld, write_pool, write_task


@pytest.fixture
def world(tmp_path):
    w = PlantedWorld(dim=8, seed=0)
    pool = w.pool(200)
    write_pool(pool, tmp_path / "pool", num_shards=2)
    write_task(w.task(40, 20), tmp_path / "task")
    return tmp_path, pool


def run_train(tmp_path, *extra):
    args = ["train", "--no-progress", "--set", f"pool={tmp_path / 'pool'}", "--set", f"tasks=[{tmp_path / 'task'}]",
            "--set", f"out={tmp_path / 'run'}", "--set", "steps=2", "--set", "upstream_batch=32",
            "--set", "downstream_batch=16", *extra]
    return main(args)


def rewrite(path, mutate):
    table = pq.read_table(path)
    pq.write_table(mutate(table), path)


def set_column(table, name, array):
    return table.set_column(table.column_names.index(name), name, array)


def expect_error(capsys, tmp_path, *needles, extra=(), fresh=True):
    code = run_train(tmp_path, *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    if fresh:
        assert not (tmp_path / "run").exists()  # nothing half-written
    return err


def test_valid_inputs_train(world, capsys):
    tmp_path, _ = world
    assert run_train(tmp_path) == 0
    assert (tmp_path / "run" / "scorer.pt").exists()


def test_missing_column(world, capsys):
    tmp_path, _ = world
    rewrite(tmp_path / "pool" / "shard00001.parquet", lambda t: t.drop(["text_embedding"]))
    expect_error(capsys, tmp_path, "shard00001.parquet", "missing column 'text_embedding'")


def test_wrong_dimension_across_shards(world, capsys):
    tmp_path, pool = world
    n = pq.read_table(tmp_path / "pool" / "shard00001.parquet").num_rows
    rewrite(tmp_path / "pool" / "shard00001.parquet",
            lambda t: set_column(t, "image_embedding", fixed_size_list(np.ones((n, 9), np.float32))))
    expect_error(capsys, tmp_path, "shard00001.parquet", "'image_embedding'", "dimension 9, expected 8")


def test_inconsistent_dimension_within_shard(world, capsys):
    tmp_path, _ = world
    def ragged(t):
        rows = [[0.1] * 8 for _ in range(t.num_rows)]
        rows[3] = [0.1] * 7
        return set_column(t, "text_embedding", pa.array(rows, type=pa.list_(pa.float32())))
    rewrite(tmp_path / "pool" / "shard00000.parquet", ragged)
    expect_error(capsys, tmp_path, "shard00000.parquet", "'text_embedding' row 3 has dimension 7")


def test_nan_embedding(world, capsys):
    tmp_path, pool = world
    def nan(t):
        m = pool["image_embedding"][: t.num_rows].copy()
        m[5, 2] = np.nan
        return set_column(t, "image_embedding", fixed_size_list(m))
    rewrite(tmp_path / "pool" / "shard00000.parquet", nan)
    expect_error(capsys, tmp_path, "shard00000.parquet", "'image_embedding' row 5 is not finite")


def test_duplicate_uid_across_shards(world, capsys):
    tmp_path, pool = world
    first = pool["uid"][0]
    def dup(t):
        uids = t.column("uid").to_pylist()
        uids[4] = first
        return set_column(t, "uid", pa.array(uids))
    rewrite(tmp_path / "pool" / "shard00001.parquet", dup)
    expect_error(capsys, tmp_path, "duplicate uid", first)


def test_malformed_uid(world, capsys):
    tmp_path, _ = world
    def bad(t):
        uids = t.column("uid").to_pylist()
        uids[2] = "not-a-uid"
        return set_column(t, "uid", pa.array(uids))
    rewrite(tmp_path / "pool" / "shard00000.parquet", bad)
    expect_error(capsys, tmp_path, "row 2", "not 32 hexadecimal characters")


def test_empty_pool(world, capsys):
    tmp_path, _ = world
    for path in (tmp_path / "pool").glob("*.parquet"):
        rewrite(path, lambda t: t.slice(0, 0))
    expect_error(capsys, tmp_path, "empty pool")


def test_pool_without_shards(world, capsys):
    tmp_path, _ = world
    for path in (tmp_path / "pool").glob("*.parquet"):
        path.unlink()
    expect_error(capsys, tmp_path, "no .parquet shards")


def test_unreadable_shard(world, capsys):
    tmp_path, _ = world
    (tmp_path / "pool" / "shard00001.parquet").write_bytes(b"this is not parquet")
    expect_error(capsys, tmp_path, "shard00001.parquet", "unreadable parquet shard")


def test_task_without_prompts(world, capsys):
    tmp_path, _ = world
    (tmp_path / "task" / "prompts.parquet").unlink()
    expect_error(capsys, tmp_path, "prompts.parquet", "task without prompts")


def test_task_with_missing_prompt_rows(world, capsys):
    tmp_path, _ = world
    rewrite(tmp_path / "task" / "prompts.parquet", lambda t: t.slice(0, t.num_rows - 1))
    expect_error(capsys, tmp_path, "prompts.parquet", "no prompt embedding for template 2 and class 5")


def test_template_without_class_placeholder(world, capsys):
    tmp_path, _ = world
    path = tmp_path / "task" / "zeroshot_classification_templates.txt"
    path.write_text(path.read_text() + "a photo of something.\n")
    expect_error(capsys, tmp_path, "line 4", "has no '{c}'")


def test_label_out_of_range(world, capsys):
    tmp_path, _ = world
    def bad(t):
        labels = t.column("label").to_numpy().copy()
        labels[7] = 6
        return set_column(t, "label", pa.array(labels))
    rewrite(tmp_path / "task" / "train.parquet", bad)
    expect_error(capsys, tmp_path, "train.parquet", "row 7: label 6 out of range for 6 classes")


def test_task_dimension_differs_from_pool(world, capsys):
    tmp_path, _ = world
    rewrite(tmp_path / "task" / "train.parquet",
            lambda t: set_column(t, "image_embedding", fixed_size_list(np.ones((t.num_rows, 4), np.float32))))
    expect_error(capsys, tmp_path, "train.parquet", "dimension 4, expected 8")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("foo=1", "unknown config key 'foo'"),
        ("reference.bar=2", "unknown config key 'reference.bar'"),
        ("mode=other", "config key 'mode' must be one of flyt, mflyt"),
        ("steps=0", "config key 'steps' must be a positive integer"),
        ("mode=mflyt", "'score_columns' is required"),
        ("reference=3", "config key 'reference' must be a mapping"),
    ],
)
def test_bad_config_key(world, capsys, override, needle):
    tmp_path, _ = world
    expect_error(capsys, tmp_path, needle, extra=("--set", override))


def test_missing_score_column_for_mflyt(world, capsys):
    tmp_path, _ = world
    expect_error(capsys, tmp_path, "missing score column 'nope'",
                 extra=("--set", "mode=mflyt", "--set", "score_columns=[informative_score, nope]"))


def test_existing_run_needs_resume(world, capsys):
    tmp_path, _ = world
    assert run_train(tmp_path) == 0
    capsys.readouterr()
    expect_error(capsys, tmp_path, "already holds a run; pass --resume", fresh=False)


def test_bad_yaml_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pool: [unclosed\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and str(cfg) in err
