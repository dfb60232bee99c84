"""M-FLYT's rank standardisation (``score_transform: rank``): the transform against an independent
mid-rank computation, its invariants (monotone, bounded, per row, ties and constant columns), its
round trip through scorer.pt and `flyt score`, the z-score default unchanged, and config errors."""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy.stats import rankdata

import flyt
from flyt.cli.main import main
from flyt.errors import FlytError
from flyt.models.checkpoint import LoadedScorer, build_model, load_scorer, save_scorer, scorer_payload
from flyt.models.mixing import MAX_KNOTS, ScoreMixer
from flyt.synthetic import make_planted, write_pool
from flyt.training.config import TrainConfig
from flyt.training.loop import build_scorer

SQRT3 = math.sqrt(3.0)


def _columns(n=1500, seed=0):
    """dense (no ties), few (6 values, heavy ties), sparse (0 but for 0.5% of rows), const."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal(n) * 3 + 1
    few = rng.integers(0, 6, n).astype(np.float64)
    sparse = np.zeros(n)
    sparse[rng.choice(n, int(0.005 * n), replace=False)] = rng.uniform(1, 20, int(0.005 * n))
    const = np.full(n, 2.5)
    return ["dense", "few", "sparse", "const"], np.stack([dense, few, sparse, const], axis=1)


def _rank(mixer, x):
    """The standardised inputs in float64 (a float32 mixer rounds them to its weights' dtype)."""
    return mixer.double().standardise(torch.as_tensor(x, dtype=torch.float64)).numpy()


def test_rank_is_the_centred_mid_rank_cdf_on_the_sample():
    names, x = _columns()
    mixer = ScoreMixer.fit_statistics(names, x, transform="rank")
    z = _rank(mixer, x)
    n = len(x)
    for k in range(x.shape[1]):
        expect = math.sqrt(12) * ((rankdata(x[:, k], method="average") - 0.5) / n - 0.5)
        np.testing.assert_allclose(z[:, k], expect, rtol=0, atol=1e-12)
        assert abs(z[:, k].mean()) < 1e-12  # exactly centred (mid-rank identity)
        _, t = np.unique(x[:, k], return_counts=True)
        var = 1 - 1 / n**2 - ((t.astype(float) ** 3 - t).sum()) / n**3
        assert z[:, k].var() == pytest.approx(var, rel=1e-9, abs=1e-12)
    assert z[:, 0].var() > 0.99  # no ties: ~ a z-score's unit variance
    assert z[:, 2].var() < 0.03  # 0.5% distinct rows: 3 q (1 - q) ~ 0.015, where a z-score has 1
    np.testing.assert_array_equal(z[:, 3], 0.0)  # a constant column carries nothing


def test_rank_is_monotone_bounded_and_close_with_reduced_knots():
    rng = np.random.default_rng(1)
    x = np.stack([rng.standard_normal(20_000), rng.exponential(size=20_000) ** 3], axis=1)
    mixer = ScoreMixer.fit_statistics(["a", "b"], x, transform="rank")
    assert len(mixer.config()["knots"][0]) <= 2 * MAX_KNOTS + 2  # thinned, not every one of 20,000 values
    z = _rank(mixer, x)
    for k in range(2):  # within the documented ~2 sqrt(12) / MAX_KNOTS of the full mid-rank value
        expect = math.sqrt(12) * ((rankdata(x[:, k]) - 0.5) / len(x) - 0.5)
        assert np.abs(z[:, k] - expect).max() < 2 * math.sqrt(12) / MAX_KNOTS + 1e-9
    # unseen values, far outside the fitted range too: non-decreasing, within +-sqrt(3)
    grid = np.sort(np.concatenate([rng.standard_normal(5000) * 10, [-1e30, -50, 0, 1e-300, 60, 1e30]]))
    out = _rank(mixer, np.stack([grid, grid], axis=1))
    assert (np.diff(out, axis=0) >= 0).all()
    assert np.abs(out).max() < SQRT3
    assert out[0, 0] == z[:, 0].min() and out[-1, 0] == z[:, 0].max()  # no extrapolation beyond the sample


def test_ties_share_one_value_and_new_values_interpolate():
    mixer = ScoreMixer.fit_statistics(["a"], np.array([[0.0], [0.0], [1.0], [3.0]]), transform="rank")
    z = _rank(mixer, np.array([[0.0], [0.5], [1.0], [2.0], [3.0], [-7.0], [9.0]]))[:, 0]
    levels = np.array([0.25, 0.25 + 0.5 * 0.375, 0.625, 0.625 + 0.5 * 0.25, 0.875, 0.25, 0.875])
    np.testing.assert_allclose(z, math.sqrt(12) * (levels - 0.5), rtol=0, atol=1e-15)


def test_rank_bounds_the_leverage_of_rare_rows():
    """The 0.5% rare rows of a binary column: rank gives them sqrt(3)(1 - q) (z-score ~14, clip 3), and one
    gradient step on a loss that rewards only them moves that column's weight less than clip 3 does."""
    rng = np.random.default_rng(0)
    n = 1000
    sparse = np.zeros(n)
    sparse[rng.choice(n, 5, replace=False)] = 1.0
    x = np.stack([rng.standard_normal(n), sparse], axis=1)
    rank = ScoreMixer.fit_statistics(["dense", "sparse"], x, transform="rank")
    z = _rank(rank, x)[:, 1]
    q = 5 / n
    np.testing.assert_allclose(np.unique(z), [-SQRT3 * q, SQRT3 * (1 - q)], rtol=1e-12)
    grads = {}
    for name, mixer in (("rank", rank), ("clip3", ScoreMixer.fit_statistics(["dense", "sparse"], x, clip=3.0))):
        mixer = mixer.double()
        loss = -torch.log_softmax(mixer(torch.as_tensor(x)), 0)[torch.as_tensor(sparse > 0)].sum()
        loss.backward()
        grads[name] = mixer.linear.weight.grad.reshape(-1)[1].abs().item()
    assert grads["rank"] < 0.7 * grads["clip3"]
    # a constant input's weight gets no gradient at all
    const = ScoreMixer.fit_statistics(["c", "d"], np.stack([np.full(n, 4.0), x[:, 0]], axis=1), transform="rank").double()
    (-torch.log_softmax(const(torch.as_tensor(np.stack([np.full(n, 4.0), x[:, 0]], axis=1))), 0)[:7].sum()).backward()
    assert const.linear.weight.grad[0, 0].item() == 0.0 and const.linear.weight.grad[0, 1].item() != 0.0


def _trained_rank_mixer(seed=3):
    names, x = _columns(seed=seed)
    mixer = ScoreMixer.fit_statistics(names, x, transform="rank")
    with torch.no_grad():
        mixer.linear.weight.copy_(torch.tensor([[0.7, -1.3, 0.4, 2.0]]))
    return names, x, mixer


def test_rank_scores_are_per_row_whatever_the_split(tmp_path):
    names, x, mixer = _trained_rank_mixer()
    save_scorer(tmp_path / "m.pt", "mflyt", "mflyt", mixer)
    scorer = load_scorer(tmp_path / "m.pt")
    rng = np.random.default_rng(9)
    fresh = np.concatenate([x, rng.standard_normal((700, 4)) * 5])  # rows the knots never saw, too
    whole = scorer.score_arrays(scores=fresh)
    for cuts in ([1, 7, 1000], [3000], [4095, 4096]):
        parts = np.split(np.arange(len(fresh)), [c for c in cuts if c < len(fresh)])
        split = np.concatenate([scorer.score_arrays(scores=fresh[p]) for p in parts])
        assert split.tobytes() == whole.tobytes()
    perm = rng.permutation(len(fresh))
    assert scorer.score_arrays(scores=fresh[perm]).tobytes() == whole[perm].tobytes()
    one = np.concatenate([scorer.score_arrays(scores=fresh[i:i + 1]) for i in range(0, len(fresh), 97)])
    assert one.tobytes() == whole[::97].tobytes()


def test_rank_survives_save_and_load(tmp_path):
    names, x, mixer = _trained_rank_mixer()
    cfg = mixer.config()
    assert cfg["transform"] == "rank" and len(cfg["knots"]) == 4 and len(cfg["knots"][3]) == 1
    in_memory = LoadedScorer(scorer_payload("mflyt", "mflyt", mixer)).score_arrays(scores=x)
    save_scorer(tmp_path / "a.pt", "mflyt", "mflyt", mixer)
    loaded = load_scorer(tmp_path / "a.pt")
    assert loaded.model.transform == "rank"
    assert loaded.score_arrays(scores=x).tobytes() == in_memory.tobytes()
    # the save path of training (a float32 mixer) round-trips exactly too: save, load, save, load
    save_scorer(tmp_path / "b.pt", "mflyt", "mflyt", mixer.float())
    once = load_scorer(tmp_path / "b.pt")
    save_scorer(tmp_path / "c.pt", "mflyt", "mflyt", once.model)
    twice = load_scorer(tmp_path / "c.pt")
    assert once.model.config() == twice.model.config()
    assert once.score_arrays(scores=x).tobytes() == twice.score_arrays(scores=x).tobytes()
    # float32 knots: a float64 value next to its rounded knot may fall into the neighbouring segment, a
    # change of at most one level step (1/n) in F: |weight| * sqrt(12) / n in the score
    bound = 2.0 * math.sqrt(12) / len(x)
    np.testing.assert_allclose(once.score_arrays(scores=x), in_memory, rtol=0, atol=bound)
    f32 = x.astype(np.float32).astype(np.float64)  # values a float32 pool column holds: no such shift
    exact = ScoreMixer.fit_statistics(names, f32, transform="rank")
    exact.linear.load_state_dict(mixer.linear.state_dict())
    before = LoadedScorer(scorer_payload("mflyt", "mflyt", exact)).score_arrays(scores=f32)
    save_scorer(tmp_path / "d.pt", "mflyt", "mflyt", exact.float())
    np.testing.assert_allclose(load_scorer(tmp_path / "d.pt").score_arrays(scores=f32), before, rtol=0, atol=1e-6)


def _old_zscore_mixer_scores(columns, x, weight, clip=None):
    """The z-score mixer as it was before the rank option (an oracle of its arithmetic)."""
    mean = torch.as_tensor(x.mean(0), dtype=torch.float64)
    std = torch.as_tensor(x.std(0), dtype=torch.float64)
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = (torch.as_tensor(x).to(torch.float64) - mean) / std
    if clip is not None:
        z = z.clamp(-clip, clip)
    linear = torch.nn.Linear(len(columns), 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear(z.to(linear.weight.dtype)).squeeze(-1)


@pytest.mark.parametrize("clip", [None, 3.0])
def test_the_zscore_default_is_unchanged(clip):
    names, x = _columns()
    mixer = ScoreMixer.fit_statistics(names, x, clip=clip)
    assert mixer.transform == "zscore"
    assert set(mixer.config()) == {"columns", "mean", "std"} | ({"clip"} if clip else set())
    weight = torch.tensor([[0.7, -1.3, 0.4, 2.0]])
    with torch.no_grad():
        mixer.linear.weight.copy_(weight)
    got = mixer(torch.as_tensor(x))
    assert got.detach().numpy().tobytes() == _old_zscore_mixer_scores(names, x, weight, clip).detach().numpy().tobytes()
    # a scorer.pt config written before the option loads as a z-score mixer
    old = {"columns": names, "mean": x.mean(0).tolist(), "std": x.std(0).tolist()}
    assert build_model("mflyt", old).transform == "zscore"
    assert TrainConfig().score_transform == "zscore"


def test_bad_transform_and_knots_are_refused(tmp_path):
    with pytest.raises(FlytError, match="transform"):
        ScoreMixer(["a"], [0.0], [1.0], transform="ranks")
    with pytest.raises(FlytError, match="knots and levels"):
        ScoreMixer(["a", "b"], [0.0, 0.0], [1.0, 1.0], transform="rank", knots=[[0.0, 1.0]], levels=[[0.2, 0.8]])
    with pytest.raises(FlytError, match="column 'a'"):
        ScoreMixer(["a"], [0.0], [1.0], transform="rank", knots=[[1.0, 0.0]], levels=[[0.2, 0.8]])
    names, x, mixer = _trained_rank_mixer()
    payload = scorer_payload("mflyt", "mflyt", mixer)
    payload["model"]["levels"][1] = payload["model"]["levels"][1][:-1]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(FlytError, match="bad.pt: .*column 'few'"):
        load_scorer(tmp_path / "bad.pt")


def _train_args(planted, out, **extra):
    return {"pool": str(planted["pool"]), "tasks": [str(planted["tasks"][0])], "out": str(out), "mode": "mflyt",
            "score_columns": ["noise_score", "informative_score"], "steps": 40, "upstream_batch": 256,
            "downstream_batch": 128, "warmup_steps": 5, "scorer_lr": 0.01, "reference_lr": 0.03,
            "checkpoint_every": 1000, **extra}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"), n=2000, num_shards=3, dim=16, seed=0)


def test_config_error_names_the_key(planted, tmp_path, capsys):
    with pytest.raises(FlytError, match="config key 'score_transform' must be one of zscore, rank, got 'ranks'"):
        TrainConfig.from_dict(_train_args(planted, tmp_path / "r", score_transform="ranks"))
    code = main(["train", "--no-progress", "--set", f"pool={planted['pool']}", "--set", f"tasks=[{planted['tasks'][0]}]",
                 "--set", "mode=mflyt", "--set", "score_columns=[noise_score]", "--set", "score_transform=uniform",
                 "--set", f"out={tmp_path / 'r'}"])
    assert code == 2
    assert "config key 'score_transform'" in capsys.readouterr().err
    cfg = TrainConfig.from_dict(_train_args(planted, tmp_path / "r", score_transform="rank"))
    with pytest.raises(FlytError, match="config key 'score_transform'.*streamed pool"):
        build_scorer(cfg, type("Stream", (), {"streaming": True})(), 16, 16)


def test_rank_trains_and_flyt_score_applies_it_on_any_shard_split(planted, tmp_path):
    run = flyt.train(_train_args(planted, tmp_path / "run", score_transform="rank"), progress=False)
    scorer = load_scorer(run.scorer)
    assert scorer.model.transform == "rank" and scorer.train_config["score_transform"] == "rank"
    weights = scorer.model.weights()
    assert all(math.isfinite(w) for w in weights.values()) and weights["informative_score"] > 0
    write_pool(planted["data"], tmp_path / "seven", num_shards=7)
    joined = {}
    for name, pool in (("three", planted["pool"]), ("seven", tmp_path / "seven")):
        flyt.score(pool=pool, out=tmp_path / f"s-{name}", scorers=[str(run.scorer)], progress=False)
        tables = [pq.read_table(p) for p in sorted((tmp_path / f"s-{name}").glob("*.parquet"))]
        uids = np.concatenate([t.column("uid").to_numpy() for t in tables])
        values = np.concatenate([t.column("mflyt").to_numpy() for t in tables])
        joined[name] = values[np.argsort(uids, kind="stable")]
    assert joined["three"].tobytes() == joined["seven"].tobytes()
    data = planted["data"]
    direct = scorer.score_arrays(scores=np.stack([data["noise_score"], data["informative_score"]], axis=1).astype(np.float64))
    assert direct[np.argsort(data["uid"], kind="stable")].tobytes() == joined["three"].tobytes()
