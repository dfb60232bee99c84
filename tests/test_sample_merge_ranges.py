"""The out-of-core merge by uid range (flyt.sampling.external): every range's slice lands at the offset
the driver computed from the shards' counts, so the merged draw equals the in-memory one whatever the
uids' spread over the ranges, the number of ranges (workers) and the memory limit."""

from __future__ import annotations

import numpy as np
import pytest

from _sample_helpers import small_pool, write_scores
from flyt.errors import FlytError
from flyt.io.uids import UID_DTYPE
from flyt.sampling import ArrayScores, SampleSpec, external, sample
from flyt.sampling.select import SpilledSelection


def pool(n: int, spread: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, 2**63, size=2 * n, dtype=np.uint64).view(UID_DTYPE).copy()
    if spread == "one-bucket":  # every high word equal: one range holds everything
        pairs["f0"] = 7
    elif spread == "three-buckets":
        pairs["f0"] = rng.integers(0, 3, n).astype(np.uint64) << np.uint64(62)
    pairs = np.unique(pairs)
    rng.shuffle(pairs)
    scores = np.round(rng.standard_normal(len(pairs)), 1)  # ties at the level
    cuts = np.linspace(0, len(pairs), 6).astype(int)
    return [ArrayScores(pairs[a:b], scores[a:b], f"s{i}") for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


SPECS = {"scs": SampleSpec("scs", total=7000, penalty=0.2, seed=1), "hcs": SampleSpec("hcs", total=5000, cap=2, seed=2),
         "topk": SampleSpec("topk", count=1500), "threshold": SampleSpec("threshold", threshold=0.4)}


@pytest.mark.parametrize("spread,method", [("hashes", m) for m in SPECS] + [("one-bucket", "scs"), ("three-buckets", "topk")])
def test_ranges_give_the_in_memory_draw(tmp_path, spread, method, monkeypatch):
    spec = SPECS[method]
    sources = pool(4000, spread)
    mem = sample(spec, sources)
    jobs = []
    real = external.merge
    monkeypatch.setattr(external, "merge", lambda run, step, j, unique: jobs.append(len(j)) or real(run, step, j, unique))
    for workers, limit in ((1, 1), (3, 5000)):
        ext = sample(spec, sources, workers=workers, max_memory=limit, spill_dir=str(tmp_path / f"{workers}"))
        assert isinstance(ext, SpilledSelection)
        assert np.asarray(ext.pairs).tobytes() == mem.pairs.tobytes()
        assert np.array_equal(np.asarray(ext.counts), mem.counts) and ext.total == mem.total
    if spread == "hashes":
        assert jobs == [4, 12]  # 4 ranges a worker, each with rows
    else:
        assert max(jobs) <= 3  # uids bunched in a few buckets: fewer ranges, the same draw


def test_plan_ranges_balances_rows():
    rows = np.zeros(external.RUN_BUCKETS, np.int64)
    rows[:512] = 10
    rows[700] = 5120  # one bucket as heavy as the first half
    bounds = external.plan_ranges(rows, 2)
    assert list(bounds) == [0, 512, external.RUN_BUCKETS]
    assert list(external.plan_ranges(np.zeros(external.RUN_BUCKETS, np.int64), 4)) == [0, 1, external.RUN_BUCKETS]


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory):
    uids, scores = small_pool(3000, seed=4)
    return write_scores(tmp_path_factory.mktemp("spill") / "scores", uids, scores, shards=3)


def test_spill_dir_holds_the_spilled_files_and_is_left_empty(scores_dir, tmp_path, monkeypatch):
    import flyt

    seen = []
    real = external.plan_merge
    monkeypatch.setattr(external, "plan_merge", lambda *a: seen.append(a[4]) or real(*a))
    spill = tmp_path / "spill"
    spill.mkdir()
    flyt.sample(scores=scores_dir, column="clip", method="scs", total=4000, penalty=0.15, out=tmp_path / "out" / "s.npy",
                max_memory="1k", spill_dir=spill)
    assert len(seen) == 1 and seen[0].startswith(str(spill) + "/flyt-sample-")
    assert not list(spill.iterdir()) and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s.json", "s.npy"]


@pytest.mark.parametrize("make", ["missing", "file"])
def test_bad_spill_dir_is_one_line(scores_dir, tmp_path, make, capsys):
    from flyt.cli.main import main

    spill = tmp_path / "spill"
    if make == "file":
        spill.write_text("")
    rc = main(["sample", "--scores", str(scores_dir), "--column", "clip", "--method", "topk", "--fraction", "0.3",
               "--out", str(tmp_path / "s.npy"), "--spill-dir", str(spill)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"--spill-dir {spill}: no such directory" in err
    assert "every node can reach" in err
    with pytest.raises(FlytError, match="--spill-dir"):
        import flyt

        flyt.sample(scores=scores_dir, column="clip", method="topk", fraction=0.3, spill_dir=spill)
