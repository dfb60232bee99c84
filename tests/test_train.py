"""End-to-end `flyt train`: a planted signal is found, M-FLYT weights the informative score,
a killed run resumes to the same scorer, and `flyt score` applies the result."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from flyt.cli.main import main
from flyt.io.pool import load_pool
from flyt.models.checkpoint import load_scorer
from flyt.synthetic import make_planted


def roc_auc(scores, labels):
    """Probability that a random positive outscores a random negative (ties count half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores[np.r_[False, np.diff(scores[order]) == 0]] if len(scores) else []):
        tie = scores == value
        ranks[tie] = ranks[tie].mean()
    pos = labels == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def test_roc_auc_helper():
    assert roc_auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5


def base_args(planted, out, steps):
    return [
        "train", "--no-progress",
        "--set", f"pool={planted['pool']}",
        "--set", f"tasks=[{planted['tasks'][0]}]",
        "--set", f"out={out}",
        "--set", f"steps={steps}",
        "--set", "upstream_batch=256",
        "--set", "downstream_batch=128",
        "--set", "warmup_steps=10",
        "--set", "scorer_lr=0.01",
        "--set", "reference_lr=0.03",
    ]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"), n=3000, num_shards=3, dim=16, seed=0)


def test_flyt_finds_planted_signal(planted, tmp_path):
    assert main(base_args(planted, tmp_path / "run", 300)) == 0
    scorer = load_scorer(tmp_path / "run" / "scorer.pt")
    pool = load_pool(planted["pool"])
    scores = scorer.score_arrays(pool.image, pool.text)
    auc = roc_auc(scores, planted["data"]["planted"])
    assert auc >= 0.9, auc
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 301))
    assert np.mean([r["downstream_loss"] for r in rows[-20:]]) < np.mean([r["downstream_loss"] for r in rows[:20]])


def test_mflyt_weights_informative_score(planted, tmp_path):
    args = base_args(planted, tmp_path / "run", 150) + [
        "--set", "mode=mflyt", "--set", "score_columns=[noise_score, informative_score]",
    ]
    assert main(args) == 0
    scorer = load_scorer(tmp_path / "run" / "scorer.pt")
    weights = scorer.model.weights()
    assert weights["informative_score"] > 0
    assert weights["informative_score"] > 3 * abs(weights["noise_score"]), weights


def test_killed_run_resumes_to_the_same_scorer(planted, tmp_path):
    steps = 60
    args = base_args(planted, tmp_path / "whole", steps) + ["--set", "checkpoint_every=10"]
    assert main(args) == 0
    whole = torch.load(tmp_path / "whole" / "scorer.pt", weights_only=True)

    killed = tmp_path / "killed"
    args = base_args(planted, killed, steps) + ["--set", "checkpoint_every=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flyt", *args], env=env)
    latest = killed / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and torch.load(latest, weights_only=False)["step"] >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed mid-way"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "scorer.pt").exists()
    step_at_kill = torch.load(latest, weights_only=False)["step"]
    assert 20 <= step_at_kill < steps

    assert main(args + ["--resume"]) == 0
    resumed = torch.load(killed / "scorer.pt", weights_only=True)
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))


def test_non_finite_step_is_skipped(planted, tmp_path, monkeypatch):
    """A step whose meta-gradient is not finite changes neither the scorer nor the reference."""
    import flyt.training.loop as loop

    real = loop.meta_gradient
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        meta = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            meta.grad_log_weights = meta.grad_log_weights * float("nan")
        return meta

    monkeypatch.setattr(loop, "meta_gradient", poisoned)
    args = base_args(planted, tmp_path / "run", 4) + ["--set", "checkpoint_every=1", "--set", "keep_checkpoint_every=1"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [False, False, True, False]
    before = torch.load(tmp_path / "run" / "checkpoints" / "step_0000002.pt", weights_only=False)
    after = torch.load(tmp_path / "run" / "checkpoints" / "step_0000003.pt", weights_only=False)
    for key, value in before["scorer"].items():
        assert torch.equal(value, after["scorer"][key]), key
    for key, value in before["reference"].items():
        assert torch.equal(value, after["reference"][key]), key
    assert after["reference_state"]["step"] == before["reference_state"]["step"]


def test_pool_fraction_is_a_shard_independent_uniform_sample(planted, tmp_path):
    from flyt.synthetic import write_pool

    write_pool(planted["data"], tmp_path / "seven", num_shards=7)
    one = load_pool(planted["pool"], fraction=0.3)
    seven = load_pool(tmp_path / "seven", fraction=0.3)
    assert sorted(one.uids) == sorted(seven.uids)
    assert 0.25 * 3000 < len(one) < 0.35 * 3000
    # the kept rows are the same pairs: embeddings travel with their uid
    order_one, order_seven = np.argsort(one.uids), np.argsort(seven.uids)
    assert np.array_equal(one.image[order_one], seven.image[order_seven])
    # the planted share is preserved (uids are independent of content)
    kept = np.isin(planted["data"]["uid"], one.uids)
    assert abs(planted["data"]["planted"][kept].mean() - planted["data"]["planted"].mean()) < 0.05
    assert len(load_pool(planted["pool"], fraction=1.0)) == 3000
