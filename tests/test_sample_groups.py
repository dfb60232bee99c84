"""Group-aware SCS / HCS (``flyt sample --groups``): the race over super-rows plus the multinomial split
against a direct simulation of the grouped process; singleton groups = plain SCS / HCS byte for byte;
shard, file-order, worker and spill invariance; bad inputs.

Statistic (as tests/test_sample_stats.py): per group and per member, a two-sample z score of the mean
count over R runs (race with seeds 0..R-1 vs the sequential process with a seeded numpy generator); a
test fails if any |z| exceeds the Bonferroni bound for family-wise level 1e-3 over groups + members.
All seeds are fixed, so outcomes are reproducible; each test also shows the statistic rejects a wrong
model (per-uid counting, or members split by the raw scores instead of exp(s / temp)).
"""

from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _sample_helpers import bonferroni_bound, counting_pairs, race_counts, small_pool, write_scores, z_scores
from flyt.api.sample import sample as api_sample
from flyt.cli.main import main
from flyt.errors import FlytError
from flyt.sampling import ArrayScores, SampleSpec, sample
from flyt.sampling.group_keys import ArrayGroups

SIZES = [1, 1, 2, 2, 3, 3, 4, 5, 5, 4]  # 30 rows in 10 groups
GROUP = np.repeat(np.arange(len(SIZES)), SIZES)
SCORES = np.random.default_rng(11).standard_normal(len(GROUP)) * 1.2
PAIRS = counting_pairs(len(GROUP))
R = 1000
TEMP = 0.5


def grouped_sequential(total, rng, penalty=0.0, cap=None, split_temperature=TEMP, runs=R):
    """The definition, one draw at a time (``runs`` independent runs side by side): row i is drawn with
    probability ~ exp(s_i/T - penalty * c_g(i)), groups at the cap out. Picking the group with probability
    ~ W_g exp(-penalty c_g), then the member ~ exp(s_i/T), is the same law written per group.

    ``split_temperature`` != TEMP is a wrong model: the group is chosen as it should be, the member by
    exp(s / split_temperature)."""
    start = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
    log_w = np.log(np.bincount(GROUP, np.exp(SCORES / TEMP)))
    member_cum = np.full((len(SIZES), max(SIZES)), np.inf)  # per group, cumulative member weights
    for g, (a, n) in enumerate(zip(start, SIZES)):
        member_cum[g, :n] = np.cumsum(np.exp(SCORES[a : a + n] / split_temperature))
    c_g = np.zeros((runs, len(SIZES)), dtype=np.int64)
    c = np.zeros((runs, len(SCORES)), dtype=np.int64)
    rows = np.arange(runs)
    for _ in range(total):
        logits = log_w - penalty * c_g
        if cap is not None:
            logits = np.where(c_g >= cap, -np.inf, logits)
        cum = np.cumsum(np.exp(logits - logits.max(axis=1, keepdims=True)), axis=1)
        g = (cum <= rng.random((runs, 1)) * cum[:, -1:]).sum(axis=1)
        top = member_cum[g, np.array(SIZES)[g] - 1]
        i = start[g] + (member_cum[g] <= (rng.random(runs) * top)[:, None]).sum(axis=1)
        c[rows, i] += 1
        c_g[rows, g] += 1
    return c


@lru_cache(maxsize=None)
def _race(total, method, penalty=None, cap=None):
    groups = ArrayGroups(PAIRS, GROUP)
    out = np.zeros((R, len(SCORES)), dtype=np.int64)
    for seed in range(R):
        spec = SampleSpec(method, total=total, penalty=penalty, cap=cap, temperature=TEMP, seed=seed)
        res = sample(spec, [ArrayScores(PAIRS, SCORES)], groups=groups)
        out[seed, res.pairs["f1"].astype(np.int64) - 1] = res.counts
    return out


def _per_group(counts):
    return np.stack([np.bincount(GROUP, row, minlength=len(SIZES)) for row in counts])


def _z(race, ref):
    return np.concatenate([z_scores(_per_group(race), _per_group(ref)), z_scores(race, ref)])


BOUND = bonferroni_bound(len(SIZES) + len(SCORES))


def test_grouped_scs_matches_the_sequential_grouped_process():
    race = _race(60, "scs", penalty=0.5)
    rng = np.random.default_rng(2024)
    seq = grouped_sequential(60, rng, penalty=0.5)
    assert (race.sum(axis=1) == 60).all()
    z = _z(race, seq)
    assert np.abs(z).max() < BOUND, z
    # Power: per-uid counting (plain SCS) and a split that forgets the temperature are both rejected.
    plain = np.stack([race_counts(SCORES, 60, seed, penalty=0.5, temperature=TEMP) for seed in range(R // 4)])
    assert np.abs(z_scores(_per_group(plain), _per_group(seq))).max() > BOUND
    wrong = grouped_sequential(60, rng, penalty=0.5, split_temperature=1.0)
    assert np.abs(_z(race, wrong)).max() > BOUND


def test_grouped_hcs_matches_the_sequential_grouped_process_with_cap():
    race = _race(45, "hcs", cap=6)
    assert (race.sum(axis=1) == 45).all() and _per_group(race).max() == 6  # the cap binds, per group
    rng = np.random.default_rng(77)
    seq = grouped_sequential(45, rng, cap=6)
    z = _z(race, seq)
    assert np.abs(z).max() < BOUND, z
    wrong = grouped_sequential(45, rng, cap=6, split_temperature=1.0)
    assert np.abs(_z(race, wrong)).max() > BOUND


# --------------------------------------------------------------------------- through flyt.sample


N = 3000


@pytest.fixture(scope="module")
def pool():
    uids, scores = small_pool(N, seed=5)
    rng = np.random.default_rng(6)
    group = np.arange(N, dtype=np.int64) * 7 + 1000  # singletons ...
    near = rng.choice(N, 600, replace=False)  # ... and 600 rows folded into 100 groups of 2-12
    group[near] = rng.integers(0, 100, len(near))
    return uids, scores, group


def _groups_dir(path, uids, values, shards=1, names=None, seed=0, column="dedup_group"):
    """A groups directory: its own sharding and row order (joined by uid, never by position)."""
    path.mkdir(parents=True, exist_ok=True)
    perm = np.random.default_rng(seed).permutation(len(uids))
    names = names or [f"g{i}" for i in range(shards)]
    for name, idx in zip(names, np.array_split(perm, shards)):
        pq.write_table(pa.table({"uid": pa.array(uids[idx], pa.string()), column: pa.array(values[idx])}),
                       path / f"{name}.parquet")
    return path


def _npy(tmp_path, scores_dir, name, *args, **fields):
    out = tmp_path / f"{name}.npy"
    api_sample(scores=str(scores_dir), column="clip", out=str(out), **dict(zip(args[::2], args[1::2])), **fields)
    return out.read_bytes()


@pytest.mark.parametrize("method,opts", [("scs", {"penalty": 0.2, "temperature": 0.7}), ("hcs", {"cap": 2, "temperature": 0.7}),
                                         ("scs", {"penalty": 0.3, "cap": 3})])
def test_singleton_groups_give_plain_scs_and_hcs_byte_for_byte(tmp_path, pool, method, opts):
    uids, scores, _ = pool
    d = write_scores(tmp_path / "s", uids, scores, shards=3)
    ints = _groups_dir(tmp_path / "gi", uids, np.arange(N, dtype=np.int64) * 3 - 5000, shards=2)
    strings = _groups_dir(tmp_path / "gs", uids, np.array([f"g{i}" for i in range(N)]), shards=1)
    fields = {"method": method, "total": 4000, "seed": 9, **opts}
    plain = _npy(tmp_path, d, "plain", **fields)
    assert _npy(tmp_path, d, "ints", groups=f"{ints}:dedup_group", **fields) == plain
    assert _npy(tmp_path, d, "strings", groups=f"{strings}:dedup_group", **fields) == plain


def test_grouped_draw_is_invariant_to_shards_file_order_workers_and_spilling(tmp_path, pool):
    uids, scores, group = pool
    one = write_scores(tmp_path / "one", uids, scores, shards=1)
    perm = np.random.default_rng(0).permutation(N)
    three = write_scores(tmp_path / "three", uids[perm], scores[perm], shards=3, names=["z2", "a0", "m1"])
    g_same = _groups_dir(tmp_path / "g1", uids, group, shards=1, names=["part-000"])  # same stem as `one`
    g_other = _groups_dir(tmp_path / "g3", uids, group, shards=3, seed=3)  # sharded otherwise
    fields = {"method": "scs", "penalty": 0.25, "total": 5000, "seed": 4, "temperature": 0.8}
    runs = {
        "a": _npy(tmp_path, one, "a", groups=f"{g_same}:dedup_group", **fields),
        "b": _npy(tmp_path, three, "b", groups=f"{g_other}:dedup_group", **fields),
        "c": _npy(tmp_path, three, "c", groups=f"{g_same}:dedup_group", workers=2, **fields),
        "d": _npy(tmp_path, three, "d", groups=f"{g_other}:dedup_group", workers=2, max_memory=90_000, **fields),
    }
    assert len(set(runs.values())) == 1
    summary = api_sample(scores=str(three), column="clip", groups=f"{g_other}:dedup_group", **fields).summary
    assert summary["groups"]["larger_groups"] > 90 and summary["groups"]["rows_in_larger_groups"] > 550
    # Not vacuous: the groups change the draw, and so does the seed.
    assert _npy(tmp_path, one, "plain", **fields) != runs["a"]
    assert _npy(tmp_path, one, "seed", groups=f"{g_same}:dedup_group", **{**fields, "seed": 5}) != runs["a"]


def test_grouped_hcs_caps_each_group_and_spills_identically(tmp_path, pool):
    uids, scores, group = pool
    d = write_scores(tmp_path / "s", uids, scores, shards=2)
    g = _groups_dir(tmp_path / "g", uids, group, shards=2)
    fields = {"method": "hcs", "cap": 2, "total": 3000, "seed": 1, "groups": f"{g}:dedup_group"}
    mem = api_sample(scores=str(d), column="clip", **fields)
    # 90 kB: the pool's marks (8 B a row), then the race, spill to disk; the 600 grouped rows (144 B each) fit
    spilled = api_sample(scores=str(d), column="clip", max_memory=90_000, out=str(tmp_path / "x.npy"), **fields)
    assert isinstance(spilled.pairs, np.memmap)
    assert np.array_equal(np.asarray(spilled.pairs), mem.pairs) and np.array_equal(np.asarray(spilled.counts), mem.counts)
    from flyt.io.uids import uids_to_pairs

    where = {(int(p["f0"]), int(p["f1"])): k for k, p in enumerate(uids_to_pairs(uids))}
    per_group = {}
    for p, c in zip(mem.pairs, mem.counts):
        k = group[where[(int(p["f0"]), int(p["f1"]))]]
        per_group[k] = per_group.get(k, 0) + int(c)
    assert max(per_group.values()) == 2 and sum(per_group.values()) == 3000
    assert mem.counts.max() == 2 and (mem.counts == 2).sum() < sum(v == 2 for v in per_group.values())


# --------------------------------------------------------------------------- bad inputs


def _bad(tmp_path, capsys, args, expect):
    out = tmp_path / "bad.npy"
    rc = main(["sample", "--column", "clip", "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and expect in err, err
    assert not out.exists()


def test_bad_group_inputs_fail_with_one_line(tmp_path, capsys, pool):
    uids, scores, group = pool
    d = str(write_scores(tmp_path / "s", uids, scores, shards=2))
    g = _groups_dir(tmp_path / "g", uids, group)
    short = _groups_dir(tmp_path / "short", uids[:-5], group[:-5])
    floats = _groups_dir(tmp_path / "f", uids, group.astype(np.float64))
    (tmp_path / "n").mkdir()
    pq.write_table(pa.table({"uid": pa.array(uids, pa.string()), "dedup_group": pa.array([None, *group[1:].tolist()], pa.int64())}),
                   tmp_path / "n" / "g.parquet")
    nulls = tmp_path / "n"
    scs = ["--scores", d, "--method", "scs", "--penalty", "0.2", "--total", "100"]
    _bad(tmp_path, capsys, [*scs, "--groups", f"{g}:nope"], "missing column 'nope'")
    _bad(tmp_path, capsys, [*scs, "--groups", f"{short}:dedup_group"], "has no group in --groups")
    _bad(tmp_path, capsys, [*scs, "--groups", f"{floats}:dedup_group"], "needs integers or strings")
    _bad(tmp_path, capsys, [*scs, "--groups", f"{nulls}:dedup_group"], "row 0: group column 'dedup_group' is null")
    _bad(tmp_path, capsys, [*scs, "--groups", str(g)], "--groups must be SCORES_DIR:COLUMN")
    _bad(tmp_path, capsys, [*scs, "--groups", f"{tmp_path / 'none'}:g"], "does not exist")
    _bad(tmp_path, capsys, ["--scores", d, "--method", "topk", "--fraction", "0.3", "--groups", f"{g}:dedup_group"],
         "--groups applies to --method scs or hcs")
    _bad(tmp_path, capsys, [*scs, "--batch", "10", "--groups", f"{g}:dedup_group"], "does not combine with --batch")
    _bad(tmp_path, capsys, ["--scores", d, "--method", "hcs", "--cap", "1", "--total", "2900", "--groups", f"{g}:dedup_group"],
         "at most --cap 1 draws per group")


def test_duplicate_uid_within_a_group_is_reported():
    pairs = counting_pairs(4)
    pairs[3] = pairs[0]
    groups = ArrayGroups(counting_pairs(3), np.array([5, 5, 6]))
    with pytest.raises(FlytError, match="duplicate uid .*row 0 and .*row 0"):
        sample(SampleSpec("scs", total=3, penalty=0.1), [ArrayScores(pairs[:3], np.zeros(3)), ArrayScores(pairs[3:], np.zeros(1))],
               groups=groups)


def test_detect_hash_collisions_change_nothing(monkeypatch):
    """Rows whose different groups share a detect hash are aggregated by their exact keys: one-member groups,
    raced as the rows themselves (raw score, own uid), so singleton groups still give plain SCS exactly."""
    import flyt.sampling.groups as grouped

    uids, scores = small_pool(500, seed=8)
    from flyt.io.uids import uids_to_pairs

    pairs = uids_to_pairs(uids)
    monkeypatch.setattr(grouped, "detect_hash", lambda keys: keys["k0"] % np.uint64(7))  # 7 values for 500 groups
    spec = SampleSpec("scs", total=700, penalty=0.3, temperature=0.6, seed=2)
    shards = [ArrayScores(pairs[i::2], scores[i::2]) for i in range(2)]
    got = sample(spec, shards, groups=ArrayGroups(pairs, np.arange(500) * 11))
    plain = sample(spec, shards)
    assert got.groups["rows_in_larger_groups"] == 500 and got.groups["largest_group"] == 1
    assert np.array_equal(got.pairs, plain.pairs) and np.array_equal(got.counts, plain.counts)
