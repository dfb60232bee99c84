"""Iterative FLYT (issue 15): rounds of (train the scorer; score the pool; draw it with SCS; continue the
reference on the draw; train on), checkpointed per round and resumed bit for bit."""

import json

import numpy as np
import pytest
import torch

from flyt.errors import FlytError
from flyt.io.uids import uids_to_pairs
from flyt.models.losses import clip_loss
from flyt.models.reference import LOGIT_SCALE_MAX, LOGIT_SCALE_MIN, EmbeddingReference
from flyt.models.scoring_head import SwiGLUScorer
from flyt.sampling.draw import sample
from flyt.sampling.methods import SampleSpec
from flyt.sampling.sources import ArrayScores
from flyt.synthetic import make_planted
from flyt.training.config import TrainConfig
from flyt.training.inner_step import AdamWConfig, adamw_init, adamw_step
from flyt.training.loop import train
from flyt.training.rounds import ROUND_TAG, Rounds
from flyt.training.upstream import MemoryUpstream


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"), n=600, num_shards=2, dim=8, seed=1)


def config(planted, out, **extra):
    iterative = {"round_steps": 3, "reference_steps": 4, "scs_penalty": 0.5, "scs_total": 300,
                 **extra.pop("iterative", {})}
    return {"pool": str(planted["pool"]), "tasks": [str(planted["tasks"][0])], "out": str(out), "steps": 6,
            "upstream_batch": 64, "downstream_batch": 32, "warmup_steps": 2, "scorer_lr": 0.01,
            "reference_lr": 0.03, "checkpoint_every": 2, "iterative": iterative, **extra}


def scorer_bytes(path):
    state = torch.load(path, weights_only=True)["state_dict"]
    return b"".join(k.encode() + v.numpy().tobytes() for k, v in state.items())


def test_two_rounds_on_a_tiny_pool(planted, tmp_path):
    scorer = train(config(planted, tmp_path / "run", checkpoint_every=100), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # one row per scorer step
    rounds = [(r["step"], r["round"]) for r in rows if "round" in r]
    assert [(step, info["round"], info["drawn"]) for step, info in rounds] == [(3, 1, 300)]  # none after the last step
    assert 1 <= rounds[0][1]["unique"] <= 300
    # the transition's checkpoint is written whatever checkpoint_every says
    assert torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=False)["step"] == 6
    plain = train({**config(planted, tmp_path / "plain", checkpoint_every=100), "iterative": {}}, progress=False)
    assert scorer_bytes(scorer) != scorer_bytes(plain)  # the transition changed what the scorer learned


def test_transition_is_the_scs_draw_then_clip_steps_on_it(planted, tmp_path):
    """Against an independent oracle: scores by the scorer's own forward, the SCS draw from them, and
    torch.optim.AdamW (decay on matrices only) on the plain CLIP loss of the documented batches."""
    cfg = TrainConfig.from_dict(config(planted, tmp_path / "unused", dtype="float64", seed=3))
    upstream = MemoryUpstream(cfg)
    pool = upstream.pool
    torch.manual_seed(0)
    scorer = SwiGLUScorer(8, 8).to(torch.float64)
    reference = EmbeddingReference(8, 8, init="random")
    params = reference.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    opt = AdamWConfig(lr=0.05, weight_decay=0.2)
    new_params, new_state, info = Rounds(cfg, upstream).transition(
        3, scorer, reference, params, adamw_init(params), opt, adamw_step, torch.float64, "cpu")
    assert info["round"] == 1 and info["drawn"] == 300 and new_state["step"] == 4

    with torch.no_grad():
        scores = scorer.float()(torch.as_tensor(pool.image), torch.as_tensor(pool.text)).double().numpy()
    rng = np.random.default_rng([3, ROUND_TAG, 1])
    spec = SampleSpec("scs", total=300, penalty=0.5, seed=int(rng.integers(2**63)))
    pairs = uids_to_pairs(pool.uids)
    drawn = sample(spec, [ArrayScores(pairs, scores)])
    assert drawn.total == 300 and drawn.unique == info["unique"]
    row_of = {(int(p["f0"]), int(p["f1"])): i for i, p in enumerate(pairs)}
    copies = np.repeat([row_of[(int(p["f0"]), int(p["f1"]))] for p in drawn.pairs], drawn.counts)
    order = rng.permutation(len(copies))
    batches = [copies[order[i * 64:(i + 1) * 64]] for i in range(4)]

    theta = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    adam = torch.optim.AdamW([{"params": [theta["image_proj"], theta["text_proj"]], "weight_decay": 0.2},
                              {"params": [theta["logit_scale"]], "weight_decay": 0.0}],
                             lr=0.05, betas=(0.9, 0.98), eps=1e-6)
    for idx in batches:
        image = reference.encode_image(theta, torch.as_tensor(pool.image[idx], dtype=torch.float64))
        text = reference.encode_text(theta, torch.as_tensor(pool.text[idx], dtype=torch.float64))
        adam.zero_grad()
        clip_loss(image, text, theta["logit_scale"].exp()).backward()
        adam.step()
        with torch.no_grad():
            theta["logit_scale"].clamp_(LOGIT_SCALE_MIN, LOGIT_SCALE_MAX)
    for k in params:
        torch.testing.assert_close(new_params[k], theta[k].detach(), rtol=1e-10, atol=1e-12)
        assert not torch.allclose(new_params[k], params[k])


class Killed(Exception):
    pass


@pytest.mark.parametrize("where", ["mid-round", "in-transition"])
def test_killed_run_resumes_in_its_round_bit_identically(planted, tmp_path, monkeypatch, where):
    import flyt.training.loop as loop

    every = 100 if where == "mid-round" else 2  # mid-round: only the transition's own checkpoint exists
    whole = train(config(planted, tmp_path / "whole", inner_steps=2, checkpoint_every=every), progress=False)
    cfg = config(planted, tmp_path / "killed", inner_steps=2, checkpoint_every=every)
    if where == "mid-round":  # dies in round 2's second step: resumes from step 3, after round 1's transition
        real, calls = loop.kstep_meta, {"n": 0}

        def dies(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 5:
                raise Killed
            return real(*args, **kwargs)

        monkeypatch.setattr(loop, "kstep_meta", dies)
        expect = 3
    else:  # dies while re-scoring after step 3: resumes from step 2 and redoes step 3 and the transition
        def dies(*args, **kwargs):
            raise Killed

        monkeypatch.setattr(Rounds, "transition", dies)
        expect = 2
    with pytest.raises(Killed):
        train(cfg, progress=False)
    assert torch.load(tmp_path / "killed" / "checkpoints" / "latest.pt", weights_only=False)["step"] == expect
    monkeypatch.undo()
    resumed = train(cfg, resume=True, progress=False)
    assert scorer_bytes(resumed) == scorer_bytes(whole)
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and "round" in rows[2]


@pytest.mark.parametrize("update, needle", [
    ({"pool_buffer": 100}, "config key 'iterative.round_steps' needs the pool in memory, but this pool is streamed"),
])
def test_streamed_pool_is_refused(planted, tmp_path, update, needle):
    with pytest.raises(FlytError, match=needle):
        train(config(planted, tmp_path / "run", **update), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("update, needle", [
    ({"iterative": {"round_steps": -1}}, "config key 'iterative.round_steps' must be a non-negative integer, got -1"),
    ({"iterative": {"reference_steps": 0}}, "config key 'iterative.reference_steps' must be a positive integer, got 0"),
    ({"iterative": {"scs_penalty": 0}}, "config key 'iterative.scs_penalty' must be a number in (0, 512], got 0"),
    ({"iterative": {"scs_total": 0}}, "config key 'iterative.scs_total' must be null or a positive integer, got 0"),
    ({"iterative": {"round_steps": 5}, "reference": {"kind": "openclip", "pool_shards": ["s.tar"]}},
     "config key 'iterative.round_steps' must be 0 with reference.kind openclip (iterative FLYT needs the "
     "embedding reference), got 5"),
])
def test_bad_iterative_keys_are_one_line(update, needle):
    with pytest.raises(FlytError) as err:
        TrainConfig.from_dict({"pool": "p", "tasks": ["t"], **update})
    assert str(err.value) == needle


def test_a_run_extended_past_a_round_end_makes_that_transition(planted, tmp_path):
    """Resumed with more steps from a last step that closes a round: the transition happens first."""
    cfg = config(planted, tmp_path / "run")
    train(cfg, progress=False)
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    assert torch.load(latest, weights_only=False)["rounds_done"] == 1  # after step 3 only: step 6 was the last
    train({**cfg, "steps": 8}, resume=True, progress=False)
    assert torch.load(latest, weights_only=False)["rounds_done"] == 2
