"""Local (in-process and process pool) and Ray engines give byte-identical score shards."""

import pytest
import torch
from tests._score_helpers import make_flyt_pool, make_task

from flyt.engines import get_map_shards
from flyt.errors import FlytError
from flyt.pipeline.score import score_pool
from flyt.scorers import ScorerOptions

SCORERS = ["clip_score", "negclip_loss", "normsim_inf", "normsim_2", "caption"]


def _setup(tmp_path):
    from flyt.models.checkpoint import save_scorer
    from flyt.models.scoring_head import SwiGLUScorer

    torch.manual_seed(0)
    save_scorer(tmp_path / "flyt.pt", "flyt", "flyt_score", SwiGLUScorer(16, 16))
    pool = make_flyt_pool(tmp_path / "pool", shards=4, rows=300, dim=16)
    task = make_task(tmp_path / "task", n=50, dim=16)
    return pool, task, SCORERS + [str(tmp_path / "flyt.pt")]


def _run(tmp_path, name, engine, workers, pool, task, scorers):
    opts = ScorerOptions(negclip_batches=3, negclip_batch_size=65)
    summary = score_pool(pool, tmp_path / name, scorers, opts, tasks=[task], engine=engine, workers=workers,
                         batch_rows=128, seed=1, progress=False)
    assert summary.scored == 4 and not summary.failures
    return {p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("*.parquet"))}


def test_local_engines_identical(tmp_path):
    pool, task, scorers = _setup(tmp_path)
    one = _run(tmp_path, "one", "local", 1, pool, task, scorers)
    two = _run(tmp_path, "two", "local", 2, pool, task, scorers)
    assert len(one) == 4 and one == two


def test_ray_engine_identical_to_local(tmp_path):
    pytest.importorskip("ray")
    pool, task, scorers = _setup(tmp_path)
    local = _run(tmp_path, "local", "local", 1, pool, task, scorers)
    ray = _run(tmp_path, "ray", "ray", 2, pool, task, scorers)
    assert len(ray) == 4 and ray == local


def test_engine_dispatch():
    from flyt.engines.local import map_shards

    assert get_map_shards("local") is map_shards
    assert list(get_map_shards("local")(abs, [-1, 2, -3], workers=1)) == [1, 2, 3]
    with pytest.raises(FlytError, match="unknown engine 'spark'"):
        get_map_shards("spark")


def test_ray_map_shards_order_and_errors():
    ray = pytest.importorskip("ray")
    from flyt.engines.ray import map_shards
    from flyt.io.uids import uids_to_pairs

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        items = list(range(-20, 0))
        assert list(map_shards(abs, items, workers=2)) == [abs(i) for i in items]  # input order
        assert list(map_shards(abs, [], workers=2)) == []
        with pytest.raises(FlytError, match="is not 32 hexadecimal characters"):  # the task's own error type
            list(map_shards(uids_to_pairs, [["0" * 32], ["zz"]], workers=2))
        assert ray.is_initialized()  # a Ray it did not start is left running
    finally:
        ray.shutdown()


def test_a_command_starts_ray_once_for_all_its_passes(tmp_path, monkeypatch):
    """dedup runs several passes over the pool (hash, spill, solve) before the score shards, each a
    map_shards call that would start (and stop) a Ray of its own: called through flyt.score, Ray starts
    once for all of them and is shut down at the end. (Its bytes equal the local engine's: test_dedup.)"""
    ray = pytest.importorskip("ray")
    import flyt
    from flyt.engines import ray as ray_engine

    pool = make_flyt_pool(tmp_path / "pool", shards=3, rows=200, dim=16)
    opts = ScorerOptions(dedup_clusters=4, dedup_sample=600)
    inits, real_init = [], ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **k: inits.append(1) or real_init(*a, **k))
    tasks_before = sum(ray_engine.tasks_per_node.values())
    flyt.score(pool=pool, out=tmp_path / "api", scorers=["dedup"], options=opts, engine="ray", workers=2,
               progress=False)
    tasks = sum(ray_engine.tasks_per_node.values()) - tasks_before
    assert len(inits) == 1 and not ray.is_initialized() and tasks > 3  # more tasks than shards: several passes


def test_a_session_leaves_a_ray_it_did_not_start_running():
    ray = pytest.importorskip("ray")
    from flyt.engines import session
    from flyt.engines.ray import map_shards

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with session("ray"), session("ray"):  # nested: the outer one decides
            assert list(map_shards(abs, [-1, -2], workers=1)) == [1, 2]
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    with session("ray"):
        assert list(map_shards(abs, [-3], workers=1)) == [3]
        assert ray.is_initialized()  # started inside the session: kept until it ends
    assert not ray.is_initialized()
