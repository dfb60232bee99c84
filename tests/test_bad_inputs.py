"""The bad-input suite (issue 16): a table of malformed inputs to `flyt train`, `score`, `sample`, `embed`
and `demo`, driven through the CLI in-process (a few in real processes), plus property-based garbage.

For every case: the expected exit code (2 for bad input, 1 for a failing environment), exactly one line
on stderr holding the case's needle (the file, row, key or option at fault), no traceback, nothing left
behind (the case's directory, where every output goes, holds what it held before), and the inputs
unchanged (the shared inputs are hashed before and after).

Cases whose fix belongs to code another change owns carry ``xfail(strict=False)`` naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _sample_helpers import small_pool, write_scores
from _score_helpers import make_datacomp_pool, make_flyt_pool, make_task
from flyt.cli.main import main
from flyt.synthetic import make_planted

DIM = 8


# --------------------------------------------------------------------------- the shared inputs


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Valid inputs every case starts from (never written by a case: hashed around each one)."""
    root = tmp_path_factory.mktemp("ws")
    make_flyt_pool(root / "pool", shards=2, rows=24, dim=DIM, extra_columns=("clip_a", "clip_b"))
    make_planted(root / "planted", n=64, num_shards=1, dim=DIM)  # a training task: classnames, prompts, splits
    make_datacomp_pool(root / "dcpool", shards=1, rows=16)
    make_task(root / "task", n=24, dim=DIM)
    uids, scores = small_pool(40, seed=3)
    write_scores(root / "scores", uids, scores, shards=2)
    (root / "afile").write_text("a regular file\n")
    (root / "train.yaml").write_text(yaml.safe_dump(_train_base(root, "UNUSED")))
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs_cache")


def _train_base(ws: Path, out: str) -> dict:
    return {"mode": "flyt", "pool": str(ws / "pool"), "tasks": [str(ws / "planted" / "task0")], "steps": 2, "warmup_steps": 1,
            "upstream_batch": 8, "downstream_batch": 8, "checkpoint_every": 1, "out": out}


def _snapshot(root: Path) -> dict:
    """{relative path: sha256 (files) or 'dir'} of everything under root, hidden files included."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    argv: list  # '{ws}' and '{t}' (the case's own directory) are filled in
    needle: str  # what the one line must name ('{ws}', '{t}' filled in)
    rc: int = 2
    setup: Callable | None = None  # setup(t, ws): write the case's malformed files under t
    patch: Callable | None = None  # patch(monkeypatch, t, ws): fault injection
    xfail: str | None = None  # the file whose fix is awaited
    marks: list = field(default_factory=list)


def _write(rel: str, data):
    """setup: write bytes/text/a table/a yaml mapping to t/rel."""

    def setup(t: Path, ws: Path):
        p = t / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        value = data(t, ws) if callable(data) else data
        if isinstance(value, bytes):
            p.write_bytes(value)
        elif isinstance(value, str):
            p.write_text(value)
        elif isinstance(value, pa.Table):
            pq.write_table(value, p)
        else:
            p.write_text(yaml.safe_dump(value))

    return setup


def _steps(*setups):
    def setup(t, ws):
        for s in setups:
            s(t, ws)

    return setup


def _mkdir(rel: str):
    return lambda t, ws: (t / rel).mkdir(parents=True, exist_ok=True)


def _table(**cols) -> pa.Table:
    return pa.table({k: pa.array(v) for k, v in cols.items()})


U0, U1, U2 = "0" * 31 + "1", "0" * 31 + "2", "0" * 31 + "3"


# sample ----------------------------------------------------------------------------------------

S = ["sample", "--scores", "{ws}/scores", "--column", "clip"]
SO = ["--out", "{t}/o.npy"]
SCS = ["--method", "scs", "--total", "50", "--penalty", "0.15"]


def _scores_dir(table_fn, name="a.parquet"):
    return _write(f"sc/{name}", table_fn)


def _sample_on(setup, needle, *extra, xfail=None, id=None):
    return Case(id, ["sample", "--scores", "{t}/sc", "--column", "clip", *SCS, *extra, *SO], needle, setup=setup, xfail=xfail)


SAMPLE = [
    Case("sample-column-uid", ["sample", "--scores", "{ws}/scores", "--column", "uid", *SCS, *SO], "--column uid"),
    Case("sample-column-missing", ["sample", "--scores", "{ws}/scores", "--column", "nope", *SCS, *SO], "missing column 'nope'"),
    Case("sample-total-0", [*S, "--method", "scs", "--total", "0", "--penalty", "0.1", *SO], "--total"),
    Case("sample-total-negative", [*S, "--method", "scs", "--total", "-5", "--penalty", "0.1", *SO], "--total"),
    Case("sample-total-2^70", [*S, "--method", "scs", "--total", str(2**70), "--penalty", "0.1", *SO], "--total"),
    Case("sample-total-not-int", [*S, "--method", "scs", "--total", "1e3", "--penalty", "0.1", *SO], "argument --total"),
    Case("sample-hcs-total-beyond-cap", [*S, "--method", "hcs", "--total", "500", "--cap", "2", *SO], "--total 500 cannot be reached"),
    Case("sample-penalty-0", [*S, "--method", "scs", "--total", "10", "--penalty", "0", *SO], "--penalty"),
    Case("sample-penalty-nan", [*S, "--method", "scs", "--total", "10", "--penalty", "nan", *SO], "--penalty"),
    Case("sample-penalty-inf", [*S, "--method", "scs", "--total", "10", "--penalty", "inf", *SO], "--penalty"),
    Case("sample-penalty-800", [*S, "--method", "scs", "--total", "10", "--penalty", "800", *SO], "--penalty"),
    Case("sample-penalty-missing", [*S, "--method", "scs", "--total", "10", *SO], "--penalty"),
    Case("sample-penalty-on-hcs", [*S, "--method", "hcs", "--total", "10", "--cap", "2", "--penalty", "1", *SO], "--penalty"),
    Case("sample-cap-missing", [*S, "--method", "hcs", "--total", "10", *SO], "--cap"),
    Case("sample-cap-0", [*S, "--method", "hcs", "--total", "10", "--cap", "0", *SO], "--cap"),
    Case("sample-fraction-0", [*S, "--method", "topk", "--fraction", "0", *SO], "--fraction"),
    Case("sample-fraction-2", [*S, "--method", "topk", "--fraction", "2", *SO], "--fraction"),
    Case("sample-fraction-nan", [*S, "--method", "topk", "--fraction", "nan", *SO], "--fraction"),
    Case("sample-fraction-and-count", [*S, "--method", "topk", "--fraction", "0.5", "--count", "3", *SO], "--fraction"),
    Case("sample-count-0", [*S, "--method", "topk", "--count", "0", *SO], "--count"),
    Case("sample-count-beyond-pool", [*S, "--method", "topk", "--count", "41", *SO], "--count 41"),
    Case("sample-threshold-nan", [*S, "--method", "threshold", "--threshold", "nan", *SO], "--threshold"),
    Case("sample-threshold-inf", [*S, "--method", "threshold", "--threshold", "inf", *SO], "--threshold"),
    Case("sample-threshold-missing", [*S, "--method", "threshold", *SO], "--threshold"),
    Case("sample-temperature-0", [*S, *SCS, "--temperature", "0", *SO], "--temperature"),
    Case("sample-temperature-inf", [*S, *SCS, "--temperature", "inf", *SO], "--temperature"),
    Case("sample-temperature-nan", [*S, *SCS, "--temperature", "nan", *SO], "--temperature"),
    Case("sample-temperature-1e-320", [*S, *SCS, "--temperature", "1e-320", *SO], "part-000.parquet: row 0: score"),
    Case("sample-batch-0", [*S, *SCS, "--batch", "0", *SO], "--batch"),
    Case("sample-batch-on-topk", [*S, "--method", "topk", "--count", "3", "--batch", "2", *SO], "--batch"),
    Case("sample-seed-negative", [*S, *SCS, "--seed", "-1", *SO], "--seed"),
    Case("sample-seed-2^64", [*S, *SCS, "--seed", str(2**64), *SO], "--seed"),
    Case("sample-budget-0", [*S, *SCS, "--budget", "0", *SO], "--budget"),
    Case("sample-workers-0", [*S, *SCS, "--workers", "0", *SO], "--workers"),
    Case("sample-method-unknown", [*S, "--method", "best", *SO], "argument --method"),
    Case("sample-engine-unknown", [*S, *SCS, "--engine", "spark", *SO], "argument --engine"),
    Case("sample-out-not-npy", [*S, *SCS, "--out", "{t}/o.txt"], "--out must name a .npy"),
    Case("sample-out-a-directory", [*S, *SCS, "--out", "{t}/d.npy"], "is a directory", setup=_mkdir("d.npy")),
    Case("sample-out-under-a-file", [*S, *SCS, "--out", "{ws}/afile/o.npy"], "afile is not a directory"),
    Case("sample-summary-a-directory", [*S, *SCS, *SO], "o.json is a directory", setup=_mkdir("o.json")),
    Case("sample-counts-a-directory", [*S, *SCS, *SO, "--counts-parquet", "{t}/c"], "--counts-parquet", setup=_mkdir("c")),
    Case("sample-counts-under-a-file", [*S, *SCS, *SO, "--counts-parquet", "{ws}/afile/c.parquet"], "--counts-parquet"),
    Case("sample-counts-is-out", [*S, *SCS, *SO, "--counts-parquet", "{t}/o.npy"], "--counts-parquet"),
    Case("sample-counts-in-scores-dir", [*S, *SCS, *SO, "--counts-parquet", "{ws}/scores/c.parquet"], "--counts-parquet"),
    Case("sample-scores-missing", ["sample", "--scores", "{t}/nope", "--column", "clip", *SCS, *SO], "nope does not exist"),
    Case("sample-scores-a-file", ["sample", "--scores", "{ws}/afile", "--column", "clip", *SCS, *SO], "afile"),
    Case("sample-scores-empty-dir", ["sample", "--scores", "{t}/sc", "--column", "clip", *SCS, *SO], "no .parquet shards",
         setup=_mkdir("sc")),
    _sample_on(_scores_dir(_table(clip=[1.0, 2.0])), "a.parquet: missing column 'uid'", id="sample-shard-without-uid"),
    _sample_on(_scores_dir(_table(uid=[U0, U1], clip=["a", "b"])), "a.parquet: column 'clip' must be numeric",
               id="sample-score-strings"),
    _sample_on(_scores_dir(_table(uid=[U0, U1], clip=[1.0, None])), "a.parquet: column 'clip' row 1 is null", id="sample-score-null"),
    _sample_on(_scores_dir(_table(uid=[U0, U1], clip=[1.0, float("nan")])), "a.parquet: column 'clip' row 1 is not finite",
               id="sample-score-nan"),
    _sample_on(_scores_dir(_table(uid=[U0, U1], clip=[-float("inf"), 1.0])), "a.parquet: column 'clip' row 0 is not finite",
               id="sample-score-inf"),
    _sample_on(_scores_dir(_table(uid=[U0, U1], clip=[1.0, 1e20])), "a.parquet: row 1: score 1e+20", id="sample-score-1e20"),
    _sample_on(_scores_dir(_table(uid=[U0, "xyz"], clip=[1.0, 2.0])), "a.parquet: row 1: uid 'xyz'", id="sample-uid-short"),
    _sample_on(_scores_dir(_table(uid=[U0, "g" * 32], clip=[1.0, 2.0])), "a.parquet: row 1: uid", id="sample-uid-not-hex"),
    _sample_on(_scores_dir(_table(uid=[U0, None], clip=[1.0, 2.0])), "a.parquet", id="sample-uid-null"),
    _sample_on(_scores_dir(_table(uid=[1, 2], clip=[1.0, 2.0])), "a.parquet: row 0: uid", id="sample-uid-ints"),
    _sample_on(_scores_dir(_table(uid=[U0, U0], clip=[1.0, 2.0])), f"duplicate uid {U0}", id="sample-uid-duplicate-in-shard"),
    _sample_on(_steps(_scores_dir(_table(uid=[U0], clip=[1.0])), _scores_dir(_table(uid=[U0], clip=[2.0]), "b.parquet")),
               f"duplicate uid {U0}", id="sample-uid-duplicate-across-shards"),
    _sample_on(_scores_dir(b"PAR1 this is not parquet"), "a.parquet: unreadable parquet shard", id="sample-shard-garbage"),
    _sample_on(_scores_dir(b""), "a.parquet", id="sample-shard-empty-file"),
    _sample_on(_scores_dir(lambda t, ws: (ws / "scores" / "part-000.parquet").read_bytes()[:300]), "a.parquet",
               id="sample-shard-truncated"),
    _sample_on(_scores_dir(lambda t, ws: pa.table({"uid": pa.array([], pa.string()), "clip": pa.array([], pa.float64())})),
               "no rows (empty pool)", id="sample-shard-zero-rows"),
]


# score -----------------------------------------------------------------------------------------

SC = ["score", "--pool", "{ws}/pool", "--out", "{t}/out", "--no-progress"]


def _score(*extra, needle, setup=None, xfail=None, id=None, rc=2, patch=None):
    return Case(id, [*SC, *extra], needle, rc=rc, setup=setup, xfail=xfail, patch=patch)


def _pool_shard(table_fn, name="p.parquet"):
    return _write(f"pool/{name}", table_fn)


def _valid_pool_table(ws: Path) -> pa.Table:
    return pq.read_table(ws / "pool" / "shard000.parquet")


def _pool_with(fn):
    return _pool_shard(lambda t, ws: fn(_valid_pool_table(ws)))


def _set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


def _scorer_payload(kind="flyt", name="flyt", shape=None):
    """A real FLYT scorer.pt payload for the pool's 16-d embeddings, then broken as asked."""
    from flyt.models.checkpoint import scorer_payload
    from flyt.models.scoring_head import SwiGLUScorer

    payload = scorer_payload("flyt", "flyt", SwiGLUScorer(16, 16))
    if kind is None:
        del payload["kind"]
    payload["name"] = name
    if shape is not None:
        first = next(iter(payload["state_dict"]))
        payload["state_dict"][first] = payload["state_dict"][first][:shape]
    return payload


def _torch_file(obj_fn):
    def setup(t, ws):
        import torch

        torch.save(obj_fn(), t / "s.pt")

    return setup


SP = ["score", "--pool", "{t}/pool", "--out", "{t}/out", "--no-progress", "--scorer", "clip_score"]
SCORE = [
    _score("--scorer", "no_such_scorer", needle="no_such_scorer", id="score-unknown-scorer"),
    _score("--scorer", "{t}/missing.pt", needle="missing.pt", id="score-scorer-pt-missing"),
    _score("--scorer", "{t}/s.pt", needle="s.pt", setup=_write("s.pt", b"\x80\x02garbage not a torch file"),
           id="score-scorer-pt-garbage"),
    _score("--scorer", "{t}/s.pt", needle="s.pt", setup=_torch_file(lambda: __import__("torch").zeros(3)), id="score-scorer-pt-tensor"),
    _score("--scorer", "{t}/s.pt", needle="s.pt", setup=_torch_file(lambda: [1, 2, 3]), id="score-scorer-pt-list"),
    _score("--scorer", "{t}/s.pt", needle="s.pt", setup=_torch_file(lambda: {"state_dict": {}}), id="score-scorer-pt-no-kind"),
    _score("--scorer", "{t}/s.pt", needle="key 'kind'", setup=_torch_file(lambda: _scorer_payload(kind=None)),
           id="score-scorer-pt-kind-missing"),
    _score("--scorer", "{t}/s.pt", needle="key 'name' must be a str", setup=_torch_file(lambda: _scorer_payload(name=123)),
           id="score-scorer-pt-name-123"),
    _score("--scorer", "{t}/s.pt", needle="does not fit its model", setup=_torch_file(lambda: _scorer_payload(shape=5)),
           id="score-scorer-pt-wrong-shape"),
    _score("--scorer", "normsim_2", needle="--tasks", id="score-normsim-without-tasks"),
    _score("--scorer", "normsim_2", "--tasks", "{t}/nope", needle="nope", id="score-task-missing"),
    _score("--scorer", "normsim_2", "--tasks", "{t}/task", needle="task/train.parquet: missing file",
           setup=_mkdir("task"), id="score-task-empty-dir"),
    _score("--scorer", "normsim_2", "--tasks", "{t}/task", needle="train.parquet",
           setup=_write("task/train.parquet", b"garbage"), id="score-task-train-garbage"),
    _score("--scorer", "normsim_2", "--tasks", "{t}/task", needle="train.parquet", id="score-task-dim-mismatch",
           setup=lambda t, ws: make_task(t / "task", n=10, dim=DIM + 4)),
    _score("--scorer", "clip_score", "--workers", "0", needle="--workers", id="score-workers-0"),
    _score("--scorer", "clip_score", "--batch-rows", "0", needle="--batch-rows", id="score-batch-rows-0"),
    _score("--scorer", "negclip_loss", "--negclip-batch-size", "0", needle="--negclip-batch-size", id="score-negclip-batch-size-0"),
    _score("--scorer", "negclip_loss", "--teacher-temperature", "nan", needle="--teacher-temperature", id="score-teacher-temperature-nan"),
    _score("--scorer", "negclip_loss", "--teacher-temperature", "0", needle="--teacher-temperature", id="score-teacher-temperature-0"),
    _score("--scorer", "image_based", "--tasks", "{ws}/task", "--clusters", "0", needle="--clusters", id="score-clusters-0"),
    _score("--scorer", "classifier", "--tasks", "{ws}/task", "--classifier", "{t}/nope.npz", needle="nope.npz",
           id="score-classifier-missing"),
    _score("--scorer", "clip_score", "--scores", "{t}/nope", needle="nope", id="score-scores-dir-missing"),
    _score("--scorer", "clip_score", "--pair", "b16", needle="argument --pair", id="score-pair-unknown"),
    _score("--scorer", "clip_score", "--seed", "x", needle="argument --seed", id="score-seed-not-int"),
    Case("score-out-a-file", ["score", "--pool", "{ws}/pool", "--out", "{ws}/afile", "--scorer", "clip_score"], "afile"),
    Case("score-out-under-a-file", ["score", "--pool", "{ws}/pool", "--out", "{ws}/afile/o", "--scorer", "clip_score"], "afile"),
    Case("score-out-is-the-pool", ["score", "--pool", "{ws}/pool", "--out", "{ws}/pool", "--scorer", "clip_score"], "--out"),
    Case("score-pool-missing", ["score", "--pool", "{t}/nope", "--out", "{t}/out", "--scorer", "clip_score"], "nope"),
    Case("score-pool-a-file", ["score", "--pool", "{ws}/afile", "--out", "{t}/out", "--scorer", "clip_score"], "afile"),
    Case("score-pool-empty-dir", SP, "no .parquet shards", setup=_mkdir("pool")),
    Case("score-pool-shard-garbage", SP, "p.parquet", setup=_pool_shard(b"PAR1 not parquet at all PAR1")),
    Case("score-pool-shard-empty-file", SP, "p.parquet", setup=_pool_shard(b"")),
    Case("score-pool-no-image-embedding", SP, "image_embedding", setup=_pool_with(lambda tb: tb.drop(["image_embedding"]))),
    Case("score-pool-no-uid", SP, "uid", setup=_pool_with(lambda tb: tb.drop(["uid"]))),
    Case("score-pool-uid-not-hex", SP, "p.parquet", setup=_pool_with(
        lambda tb: _set_column(tb, "uid", pa.array(["q" * 32] + tb.column("uid").to_pylist()[1:]))),
    ),
    Case("score-pool-duplicate-uid", SP, "duplicate uid", setup=_pool_with(
        lambda tb: _set_column(tb, "uid", pa.array([tb.column("uid")[0].as_py()] * 2 + tb.column("uid").to_pylist()[2:])))),
    Case("score-pool-embedding-nan", SP, "p.parquet", setup=_pool_with(lambda tb: _set_column(
        tb, "image_embedding", pa.FixedSizeListArray.from_arrays(
            pa.array(np.r_[np.nan, np.ones(tb.num_rows * DIM - 1)].astype(np.float32)), DIM)))),
    Case("score-pool-embedding-strings", SP, "image_embedding", setup=_pool_with(lambda tb: _set_column(
        tb, "image_embedding", pa.array(["x"] * tb.num_rows)))),
    Case("score-pool-image-text-dims-differ", SP, "p.parquet", setup=_pool_with(lambda tb: _set_column(
        tb, "text_embedding", pa.FixedSizeListArray.from_arrays(pa.array(np.ones(tb.num_rows * (DIM + 2), np.float32)), DIM + 2)))),
    Case("score-datacomp-npz-garbage", ["score", "--pool", "{t}/dc", "--out", "{t}/out", "--scorer", "clip_score"], "00000000.npz",
         setup=lambda t, ws: (make_datacomp_pool(t / "dc", shards=1, rows=8), (t / "dc" / "00000000.npz").write_bytes(b"nonsense"))),
    Case("score-datacomp-npz-missing", ["score", "--pool", "{t}/dc", "--out", "{t}/out", "--scorer", "clip_score"], "00000000.parquet",
         setup=lambda t, ws: (make_datacomp_pool(t / "dc", shards=1, rows=8), (t / "dc" / "00000000.npz").unlink())),
    Case("score-datacomp-npz-wrong-rows", ["score", "--pool", "{t}/dc", "--out", "{t}/out", "--scorer", "clip_score"], "00000000",
         setup=lambda t, ws: make_datacomp_pool(t / "dc", shards=1, rows=8,
                                                arrays_fn=lambda s, a: {k: v[:5] for k, v in a.items()})),
    Case("score-datacomp-npz-missing-key", ["score", "--pool", "{t}/dc", "--out", "{t}/out", "--scorer", "clip_score"], "l14",
         setup=lambda t, ws: make_datacomp_pool(t / "dc", shards=1, rows=8,
                                                arrays_fn=lambda s, a: {k: v for k, v in a.items() if not k.startswith("l14")})),
]


# train -----------------------------------------------------------------------------------------

def _train_yaml(**changes):
    """setup: t/c.yaml = the valid base config with ``changes`` (dotted keys nest)."""

    def data(t, ws):
        cfg = _train_base(ws, str(t / "run"))
        for key, value in changes.items():
            *heads, last = key.split(".")
            node = cfg
            for h in heads:
                node = node.setdefault(h, {})
            node[last] = _fill_all(value, t, ws)
        return cfg

    return _write("c.yaml", data)


def _train(id, needle, xfail=None, rc=2, **changes):
    return Case(id, ["train", "{t}/c.yaml", "--no-progress"], needle, rc=rc, setup=_train_yaml(**changes), xfail=xfail)


def _task_copy(change, name: str):
    """setup: t/task = the planted task with file ``name`` changed (a table function, bytes, or None: removed)."""

    def setup(t: Path, ws: Path):
        import shutil

        shutil.copytree(ws / "planted" / "task0", t / "task")
        path = t / "task" / name
        if change is None:
            path.unlink()
            return
        value = change(pq.read_table(path))
        if isinstance(value, bytes):
            path.write_bytes(value)
        else:
            pq.write_table(value, path)

    return setup


def _train_set(id, needle, *sets, xfail=None):
    return Case(id, ["train", "{ws}/train.yaml", "--no-progress", "--set", "out={t}/run", *[a for s in sets for a in ("--set", s)]],
                needle, xfail=xfail)


AWAIT_TRAIN = "awaiting fix in src/flyt/training/config.py"
TRAIN = [
    Case("train-config-missing", ["train", "{t}/nope.yaml"], "nope.yaml does not exist"),
    Case("train-config-a-directory", ["train", "{ws}/pool"], "is a directory"),
    Case("train-config-not-utf8", ["train", "{t}/c.yaml"], "c.yaml: not UTF-8", setup=_write("c.yaml", b"steps: 2\n\xff\xfe\n")),
    Case("train-config-bad-yaml", ["train", "{t}/c.yaml"], "c.yaml: not valid YAML", setup=_write("c.yaml", "steps: [1, 2\n")),
    Case("train-config-a-list", ["train", "{t}/c.yaml"], "c.yaml", setup=_write("c.yaml", "- 1\n- 2\n")),
    Case("train-config-a-number", ["train", "{t}/c.yaml"], "c.yaml", setup=_write("c.yaml", "42\n")),
    _train("train-unknown-key", "unknown config key 'stepz'", stepz=3),
    _train("train-unknown-nested-key", "unknown config key 'reference.nope'", **{"reference.nope": 1}),
    _train("train-nested-not-mapping", "'reference'", reference=3),
    _train("train-seed-abc", "'seed'", seed="abc"),
    _train("train-seed-negative", "'seed'", seed=-1),
    _train("train-seed-float", "'seed'", seed=1.5),
    _train("train-steps-0", "'steps'", steps=0),
    _train("train-steps-negative", "'steps'", steps=-4),
    _train("train-hidden-dim-negative", "'scorer.hidden_dim'", **{"scorer.hidden_dim": -3}),
    _train("train-beta1-abc", "'reference.beta1'", **{"reference.beta1": "abc"}),
    _train("train-beta1-2", "'reference.beta1'", **{"reference.beta1": 2.0}),
    _train("train-mode-unknown", "'mode'", mode="best"),
    _train("train-pair-unknown", "'pair'", pair="b16"),
    _train("train-dtype-unknown", "'dtype'", dtype="float16"),
    _train("train-pool-fraction-0", "'pool_fraction'", pool_fraction=0),
    _train("train-pool-fraction-2", "'pool_fraction'", pool_fraction=2),
    _train("train-upstream-batch-0", "'upstream_batch'", upstream_batch=0),
    _train("train-downstream-batch-negative", "'downstream_batch'", downstream_batch=-1),
    _train("train-scorer-lr-nan", "'scorer_lr'", scorer_lr=float("nan")),
    _train("train-reference-lr-inf", "'reference_lr'", reference_lr=float("inf")),
    _train("train-update-reference-maybe", "'update_reference'", update_reference="maybe"),
    _train("train-cosine-init-no-string", "'scorer.cosine_init'", **{"scorer.cosine_init": "no"}),
    _train("train-name-a-number", "'name'", name=123),
    _train("train-pool-missing", "nope", pool="/nonexistent/nope"),
    _train("train-pool-none", "'pool'", pool=None),
    _train("train-tasks-empty", "'tasks'", tasks=[]),
    _train("train-task-missing", "nope", tasks=["/nonexistent/nope"]),
    _train("train-tasks-a-string-of-garbage", "'tasks'", tasks=12),
    _train("train-optimizer-unknown", "'reference.optimizer'", **{"reference.optimizer": "lbfgs"}),
    _train("train-mflyt-without-columns", "'score_columns'", mode="mflyt"),
    _train("train-mflyt-column-twice", "'clip_a' twice", mode="mflyt", score_columns=["clip_a", "clip_a"]),
    _train("train-mflyt-column-missing", "score column 'nope'", mode="mflyt", score_columns=["nope"]),
    _train("train-scores-dir-missing", "nope", mode="mflyt", score_columns=["clip_a"], scores=["/nonexistent/nope"]),
    _train("train-out-a-file", "'out'", out="{ws}/afile"),
    _train("train-out-under-a-file", "'out'", out="{ws}/afile/run"),
    _train("train-checkpoint-every-0", "'checkpoint_every'", checkpoint_every=0),
    Case("train-task-labels-float", ["train", "{t}/c.yaml", "--no-progress"], "train.parquet: row 0: label 0.5",
         setup=_steps(_task_copy(lambda tb: _set_column(tb, "label", pa.array(np.full(tb.num_rows, 0.5))), "train.parquet"),
                      _train_yaml(tasks=["{t}/task"]))),
    Case("train-task-labels-negative", ["train", "{t}/c.yaml", "--no-progress"], "train.parquet: row 0: label -1",
         setup=_steps(_task_copy(lambda tb: _set_column(tb, "label", pa.array(np.full(tb.num_rows, -1))), "train.parquet"),
                      _train_yaml(tasks=["{t}/task"]))),
    Case("train-task-label-beyond-classes", ["train", "{t}/c.yaml", "--no-progress"], "train.parquet: row 0: label 99",
         setup=_steps(_task_copy(lambda tb: _set_column(tb, "label", pa.array(np.full(tb.num_rows, 99))), "train.parquet"),
                      _train_yaml(tasks=["{t}/task"]))),
    Case("train-task-prompts-garbage", ["train", "{t}/c.yaml", "--no-progress"], "prompts.parquet",
         setup=_steps(_task_copy(lambda tb: b"garbage", "prompts.parquet"), _train_yaml(tasks=["{t}/task"]))),
    Case("train-task-no-classnames", ["train", "{t}/c.yaml", "--no-progress"], "classnames.txt",
         setup=_steps(_task_copy(None, "classnames.txt"), _train_yaml(tasks=["{t}/task"]))),
    Case("train-task-dim-differs-from-pool", ["train", "{t}/c.yaml", "--no-progress"], "dimension",
         setup=_steps(lambda t, ws: make_planted(t / "p", n=16, num_shards=1, dim=DIM + 4),
                      _train_yaml(tasks=["{t}/p/task0"]))),
    _train_set("train-set-without-equals", "--set", "steps"),
    _train_set("train-set-unknown-key", "unknown config key 'nope'", "nope=1"),
    _train_set("train-set-seed-abc", "'seed'", "seed=abc"),
    Case("train-resume-nothing-to-resume", ["train", "{ws}/train.yaml", "--no-progress", "--resume", "--set", "out={t}/run"], "--resume"),
]


# embed -----------------------------------------------------------------------------------------

def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


EMBED = [
    Case("embed-pool-input-missing", ["embed", "pool", "--input", "{t}/nope", "--out", "{t}/o"], "nope"),
    Case("embed-pool-input-garbage-parquet", ["embed", "pool", "--input", "{t}/in.parquet", "--out", "{t}/o"], "in.parquet",
         setup=_write("in.parquet", b"garbage bytes")),
    Case("embed-pool-input-no-image", ["embed", "pool", "--input", "{t}/in.parquet", "--out", "{t}/o"], "'image'",
         setup=_write("in.parquet", lambda t, ws: _table(text=["a", "b"]))),
    Case("embed-pool-input-no-text", ["embed", "pool", "--input", "{t}/in.parquet", "--out", "{t}/o"], "'text'",
         setup=_write("in.parquet", lambda t, ws: pa.table({"image": pa.array([_png()], pa.binary())}))),
    Case("embed-pool-image-path-missing", ["embed", "pool", "--input", "{t}/in.parquet", "--out", "{t}/o"], "nope.png",
         setup=_write("in.parquet", lambda t, ws: _table(text=["a"], image_path=["nope.png"]))),
    Case("embed-pool-empty-dir", ["embed", "pool", "--input", "{t}/in", "--out", "{t}/o"], "no image-text pairs", setup=_mkdir("in")),
    Case("embed-pool-out-under-a-file", ["embed", "pool", "--input", "{t}/in.parquet", "--out", "{ws}/afile/o"], "afile",
         setup=_write("in.parquet", lambda t, ws: pa.table({"text": ["a"], "image": pa.array([_png()], pa.binary())}))),
    Case("embed-pool-shard-rows-0", ["embed", "pool", "--input", "{t}/in.parquet", "--out", "{t}/o", "--shard-rows", "0"],
         "--shard-rows", setup=_write("in.parquet", lambda t, ws: pa.table({"text": ["a"], "image": pa.array([_png()], pa.binary())}))),
    Case("embed-pool-batch-size-0", ["embed", "pool", "--input", "{t}/in.parquet", "--out", "{t}/o", "--batch-size", "0"],
         "--batch-size", setup=_write("in.parquet", lambda t, ws: pa.table({"text": ["a"], "image": pa.array([_png()], pa.binary())}))),
    Case("embed-pool-encoder-unknown", ["embed", "pool", "--input", "{t}/in.parquet", "--out", "{t}/o", "--encoder", "nope"],
         "nope", setup=_write("in.parquet", lambda t, ws: pa.table({"text": ["a"], "image": pa.array([_png()], pa.binary())}))),
    Case("embed-pool-format-unknown", ["embed", "pool", "--input", "{t}/x", "--out", "{t}/o", "--format", "csv"], "argument --format"),
    Case("embed-pool-tar-garbage", ["embed", "pool", "--input", "{t}/a.tar", "--out", "{t}/o"], "a.tar",
         setup=_write("a.tar", b"not a tar" * 200)),
    Case("embed-task-input-missing", ["embed", "task", "--input", "{t}/nope", "--out", "{t}/o"], "nope"),
    Case("embed-task-no-classnames", ["embed", "task", "--input", "{t}/task", "--out", "{t}/o"], "classnames.txt",
         setup=_write("task/zeroshot_classification_templates.txt", "a photo of {c}.\n")),
    Case("embed-task-no-templates", ["embed", "task", "--input", "{t}/task", "--out", "{t}/o"], "zeroshot_classification_templates.txt",
         setup=_write("task/classnames.txt", "cat\ndog\n")),
    Case("embed-what-missing", ["embed"], "WHAT"),
    Case("embed-bench-swap-rate-2", ["embed", "bench", "--out", "{t}/b", "--swap-rate", "2"], "--swap-rate"),
]


# demo ------------------------------------------------------------------------------------------

def _no_module(name):
    def patch(monkeypatch, t, ws):
        monkeypatch.setitem(sys.modules, name, None)

    return patch


DEMO = [
    Case("demo-out-a-file", ["demo", "--out", "{ws}/afile"], "afile is not a directory"),
    Case("demo-out-under-a-file", ["demo", "--out", "{ws}/afile/d"], "afile is not a directory"),
    Case("demo-cache-a-file", ["demo", "--out", "{t}/d", "--cache", "{ws}/afile"], "--cache"),
    Case("demo-cache-under-a-file", ["demo", "--out", "{t}/d", "--cache", "{ws}/afile/c"], "--cache"),
    Case("demo-bench-extra-missing-cairosvg", ["demo", "--out", "{t}/d"], "pip install 'flyt-clip[bench]'", patch=_no_module("cairosvg")),
    Case("demo-bench-extra-missing-sentence-transformers", ["demo", "--out", "{t}/d"], "'sentence_transformers'",
         patch=_no_module("sentence_transformers")),
    Case("demo-bench-extra-missing-matplotlib", ["demo", "--out", "{t}/d"], "'matplotlib'", patch=_no_module("matplotlib")),
    Case("demo-unknown-flag", ["demo", "--fast"], "unrecognized arguments: --fast"),
]


# faults: the environment fails (exit 1) ----------------------------------------------------------

def _enospc_on_write(monkeypatch, t, ws):
    """Every write of a file under t fails as on a full disk."""
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, *a, **kw):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if any(m in mode for m in "wax") and str(file).startswith(str(t)):
            return Full(f)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)


def _eacces_on_mkstemp(monkeypatch, t, ws):
    """Creating a file under t is refused (a read-only directory for an ordinary account)."""
    import tempfile

    real = tempfile.mkstemp

    def refuse(*a, **kw):
        if str(kw.get("dir", "")).startswith(str(t)):
            raise PermissionError(errno.EACCES, "Permission denied", str(kw.get("dir")))
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


FAULTS = [
    Case("fault-sample-full-disk", [*S, *SCS, *SO], "o.npy: No space left on device", rc=1, patch=_enospc_on_write),
    Case("fault-sample-read-only", [*S, *SCS, *SO], "Permission denied", rc=1, patch=_eacces_on_mkstemp),
    Case("fault-score-read-only", [*SC, "--scorer", "clip_score"], "Permission denied", rc=1, patch=_eacces_on_mkstemp),
    Case("fault-train-read-only", ["train", "{ws}/train.yaml", "--no-progress", "--set", "out={t}/run"], "Permission denied",
         rc=1, patch=_eacces_on_mkstemp),
]


# --------------------------------------------------------------------------- awaited fixes

# Cases that fail today for code this change does not own (the coordinator removes a mark once the
# fix lands). Keyed by case id.
AWAITED: dict[str, str] = {
}

CASES = SAMPLE + SCORE + TRAIN + EMBED + DEMO + FAULTS


def _params():
    for c in CASES:
        marks = list(c.marks)
        reason = c.xfail or AWAITED.get(c.id)
        if reason:
            marks.append(pytest.mark.xfail(strict=False, reason=reason))
        yield pytest.param(c, id=c.id, marks=marks)


def _fill(value: str, t: Path, ws: Path) -> str:
    return str(value).replace("{ws}", str(ws)).replace("{t}", str(t))


def _fill_all(value, t: Path, ws: Path):
    if isinstance(value, str):
        return _fill(value, t, ws)
    if isinstance(value, list):
        return [_fill_all(v, t, ws) for v in value]
    return value


def test_the_table_has_at_least_100_cases():
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)


@pytest.fixture()
def no_demo(monkeypatch):
    """The demo must refuse bad input before any work: fail loudly if it ever starts."""
    import flyt.api.demo as api_demo

    def started(*a, **kw):
        raise AssertionError("the demo started")

    monkeypatch.setattr(api_demo, "run_demo", started)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(case: Case, ws, cache_dir, tmp_path_factory, capsys, monkeypatch, no_demo):
    t = tmp_path_factory.mktemp("c")  # a name that never matches a needle by accident
    monkeypatch.setenv("FLYT_CACHE", str(cache_dir))
    monkeypatch.delenv("FLYT_DEBUG", raising=False)
    if case.setup:
        case.setup(t, ws)
    if case.patch:
        case.patch(monkeypatch, t, ws)
    argv = [_fill(a, t, ws) for a in case.argv]
    before_ws, before_t = _snapshot(ws), _snapshot(t)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    monkeypatch.undo()  # the fault patches end before the checks read files
    lines = err.strip().splitlines()
    needle = _fill(case.needle, t, ws)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert needle in lines[0], err
    assert rc == case.rc, err
    assert _snapshot(ws) == before_ws, "an input changed"
    assert _snapshot(t) == before_t, "output left behind"


# --------------------------------------------------------------------------- real processes


@pytest.mark.parametrize("case_id", ["sample-column-uid", "sample-out-a-directory", "score-scorer-pt-garbage",
                                     "train-seed-abc", "train-config-not-utf8", "sample-total-not-int"])
def test_no_traceback_in_a_real_process(case_id, ws, cache_dir, tmp_path_factory):
    case = next(c for c in CASES if c.id == case_id)
    t = tmp_path_factory.mktemp("c")
    if case.setup:
        case.setup(t, ws)
    before = _snapshot(ws), _snapshot(t)
    proc = subprocess.run([sys.executable, "-m", "flyt", *[_fill(a, t, ws) for a in case.argv]], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "FLYT_CACHE": str(cache_dir)})
    if (reason := case.xfail or AWAITED.get(case.id)) and (proc.returncode != case.rc or "Traceback" in proc.stderr):
        pytest.xfail(reason)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == case.rc and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (_snapshot(ws), _snapshot(t)) == before


# --------------------------------------------------------------------------- property-based garbage


def _expect_one_line(argv, capsys, rc=2):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and code == rc, err
    return err


GARBAGE = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@GARBAGE
@given(data=st.binary(min_size=0, max_size=400))
def test_garbage_bytes_as_a_score_shard(data, tmp_path_factory, capsys):
    d = tmp_path_factory.mktemp("g")
    (d / "sc").mkdir()
    (d / "sc" / "a.parquet").write_bytes(data)
    err = _expect_one_line(["sample", "--scores", str(d / "sc"), "--column", "clip", *SCS, "--out", str(d / "o.npy")], capsys)
    assert "a.parquet" in err
    assert sorted(p.name for p in d.iterdir()) == ["sc"] and (d / "sc" / "a.parquet").read_bytes() == data


@GARBAGE
@given(uid=st.text(min_size=0, max_size=40).filter(lambda s: not (len(s) == 32 and all(c in "0123456789abcdefABCDEF" for c in s))))
def test_random_non_hex_uids(uid, tmp_path_factory, capsys):
    d = tmp_path_factory.mktemp("u")
    write_scores(d / "sc", np.array([U0, uid, U2], dtype=object), np.array([1.0, 2.0, 3.0]))
    err = _expect_one_line(["sample", "--scores", str(d / "sc"), "--column", "clip", *SCS, "--out", str(d / "o.npy")], capsys)
    assert "part-000.parquet: row 1: uid" in err
    assert sorted(p.name for p in d.iterdir()) == ["sc"]


@GARBAGE
@given(data=st.binary(min_size=1, max_size=300))
def test_garbage_bytes_as_a_datacomp_npz(data, tmp_path_factory, capsys):
    d = tmp_path_factory.mktemp("n")
    make_datacomp_pool(d / "dc", shards=1, rows=8)
    (d / "dc" / "00000000.npz").write_bytes(data)
    err = _expect_one_line(["score", "--pool", str(d / "dc"), "--out", str(d / "out"), "--scorer", "clip_score", "--no-progress"],
                           capsys)
    assert "00000000" in err and not (d / "out").exists()


@GARBAGE
@given(text=st.text(max_size=200))
def test_random_text_as_a_train_config(text, tmp_path_factory, capsys):
    d = tmp_path_factory.mktemp("y")
    (d / "c.yaml").write_text(text)
    try:
        code = main(["train", str(d / "c.yaml"), "--no-progress", "--set", f"out={d / 'run'}", "--set", "steps=0"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    # whatever the text holds, steps=0 is refused: one line, never a traceback, no run directory
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and code == 2, err
    assert not (d / "run").exists()
