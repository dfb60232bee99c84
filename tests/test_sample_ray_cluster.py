"""flyt sample on a simulated two-node Ray cluster (``ray.cluster_utils.Cluster``: a head and one more
node, one CPU each, small object stores) gives the same bytes as the local engine, for every method and
for a draw forced out of core (its duplicate check and merge then run as Ray tasks too), and the tasks
ran on both nodes."""

from __future__ import annotations

import json

import pytest

from _sample_helpers import small_pool, write_scores

ray = pytest.importorskip("ray")

N = 4000
METHODS = {
    "scs": dict(method="scs", total=6000, penalty=0.15, seed=3),
    "hcs": dict(method="hcs", total=9000, cap=4, seed=5),
    "topk": dict(method="topk", fraction=0.3),
    "threshold": dict(method="threshold", threshold=0.25),
    "scs-external": dict(method="scs", total=6000, penalty=0.15, seed=3, max_memory="2k"),
}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    store = 80 << 20
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store, "include_dashboard": False})
    c.add_node(num_cpus=1, object_store_memory=store)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory):
    uids, scores = small_pool(N, seed=7)
    return write_scores(tmp_path_factory.mktemp("ray") / "scores", uids, scores, shards=5)


def draw(scores_dir, out, engine, workers, options, **extra) -> tuple[bytes, dict]:
    import flyt

    flyt.sample(scores=scores_dir, column="clip", out=out, engine=engine, workers=workers, **options, **extra)
    summary = json.loads(out.with_suffix(".json").read_text())
    summary.pop("scores")
    return out.read_bytes(), summary


@pytest.mark.parametrize("name", sorted(METHODS))
def test_cluster_gives_the_local_bytes(cluster, scores_dir, tmp_path, monkeypatch, name):
    from flyt.sampling import external

    merges = []
    real_merge = external.merge
    monkeypatch.setattr(external, "merge", lambda *a, **k: merges.append(1) or real_merge(*a, **k))
    options = dict(METHODS[name])
    # A relative --scores: Ray workers run elsewhere (here: in the directory the cluster started in).
    monkeypatch.chdir(scores_dir.parent)
    scores_dir = type(scores_dir)(scores_dir.name)
    local = draw(scores_dir, tmp_path / "local.npy", "local", 1, {k: v for k, v in options.items() if k != "max_memory"})
    assert not merges  # in memory locally
    spill = tmp_path / "shared"  # on a real cluster: a path every node reaches
    spill.mkdir()
    on_ray = draw(scores_dir, tmp_path / "ray.npy", "ray", 2, options, spill_dir=spill)
    assert on_ray == local
    assert bool(merges) == ("max_memory" in options)  # the forced case did go out of core (merge as Ray tasks)
    assert not list(spill.iterdir())  # its temporary directory is gone


def test_tasks_ran_on_both_nodes(cluster, scores_dir, tmp_path):
    from flyt.engines.ray import tasks_per_node

    tasks_per_node.clear()
    draw(scores_dir, tmp_path / "ray.npy", "ray", 2, METHODS["scs-external"], spill_dir=tmp_path)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2 and set(tasks_per_node) == nodes, dict(tasks_per_node)
