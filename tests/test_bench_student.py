"""Student CLIP + zero-shot evaluation on synthetic embeddings (no assets needed)."""


import numpy as np
import pytest
import torch

from flyt.bench.evaluate import copy_detection, defect_auc, evaluate, evaluate_selection, zeroshot_weights
from flyt.bench.student import Student, StudentConfig, batches, multiset_indices, train_student
from flyt.errors import FlytError
from flyt.io.tasks import Split, Task
from flyt.io.uids import random_uids, uids_to_pairs
from flyt.models.losses import clip_loss

D_IMG, D_TXT, K = 24, 16, 6


def _normalise(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _world(seed=0, n=1200):
    """Concepts with an image-space centre and a text-space centre (unrelated spaces, like two
    separately trained towers); pool pairs show the same concept on both sides."""
    rng = np.random.default_rng(seed)
    img_c, txt_c = rng.normal(size=(K, D_IMG)), rng.normal(size=(K, D_TXT))
    concept = rng.integers(K, size=n)
    image = _normalise(img_c[concept] + 0.5 * rng.normal(size=(n, D_IMG)))
    text = _normalise(txt_c[concept] + 0.5 * rng.normal(size=(n, D_TXT)))
    labels = rng.integers(K, size=300)
    test = Split(_normalise(img_c[labels] + 0.5 * rng.normal(size=(300, D_IMG))), labels)
    prompts = _normalise(txt_c[None] + 0.3 * rng.normal(size=(3, K, D_TXT)))
    task = Task("synthetic", [f"c{i}" for i in range(K)], ["a {c}", "the {c}", "{c}!"], prompts, test, test)
    return image, text, task


CFG = StudentConfig(dim=16, samples_seen=20_000, batch_size=128, lr=5e-3)


def test_aligned_pairs_beat_shuffled_captions():
    image, text, task = _world()
    rows = np.arange(len(image))
    aligned = evaluate(train_student(image, text, rows, CFG, seed=0), [task])
    shuffled_text = text[np.random.default_rng(1).permutation(len(text))]
    shuffled = evaluate(train_student(image, shuffled_text, rows, CFG, seed=0), [task])
    assert aligned["synthetic"] > 0.8
    assert shuffled["synthetic"] < 0.45  # chance is 1/6
    assert aligned["average"] == aligned["synthetic"]


def test_budget_is_fixed_whatever_the_subset_size():
    cfg = StudentConfig(samples_seen=1000, batch_size=64)
    for subset in (np.arange(3), np.arange(500), np.arange(5000)):
        seen = np.concatenate(list(batches(subset, cfg, seed=0)))
        assert len(seen) == 1000
        counts = np.bincount(seen, minlength=len(subset))
        # Every pass is a full reshuffled pass: counts differ by at most one across items.
        assert counts.max() - counts[: min(len(subset), 1000)].min() <= 1


def test_batches_repeat_multiset_counts():
    cfg = StudentConfig(samples_seen=3000, batch_size=100)
    seen = np.concatenate(list(batches(np.array([0, 0, 1]), cfg, seed=3)))
    assert np.bincount(seen).tolist() == [2000, 1000]
    again = np.concatenate(list(batches(np.array([0, 0, 1]), cfg, seed=3)))
    assert (seen == again).all()


def test_clip_loss_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    scale = torch.tensor(10.0)
    s = 10.0 * (a @ b.T).numpy()
    li = -np.mean([s[i, i] - np.log(np.exp(s[i]).sum()) for i in range(5)])
    lt = -np.mean([s[i, i] - np.log(np.exp(s[:, i]).sum()) for i in range(5)])
    assert clip_loss(a, b, scale).item() == pytest.approx((li + lt) / 2, rel=1e-5)


def test_prompt_ensemble_is_mean_of_normalised_prompts():
    torch.manual_seed(0)
    student = Student(D_IMG, D_TXT, StudentConfig(dim=8))
    prompts = np.random.default_rng(0).normal(size=(3, K, D_TXT)).astype(np.float32)
    w = zeroshot_weights(student, prompts).numpy()
    proj = student.text_proj.weight.detach().numpy()
    direct = _normalise(np.mean(_normalise(prompts @ proj.T), axis=0))
    np.testing.assert_allclose(w, direct, atol=1e-5)


def test_multiset_from_subset_array_and_counts(tmp_path):
    rng = np.random.default_rng(0)
    uids = random_uids(10, rng)
    pairs = uids_to_pairs(uids)
    subset = np.sort(np.concatenate([pairs[[2, 2, 7]]]))
    idx = multiset_indices(uids, subset)
    assert sorted(idx.tolist()) == [2, 2, 7]
    idx = multiset_indices(uids, {uids[4]: 3, uids[1]: 0, uids[9]: 1})
    assert sorted(idx.tolist()) == [4, 4, 4, 9]
    assert multiset_indices(uids, np.array([1, 1, 0])).tolist() == [1, 1, 0]
    np.save(tmp_path / "subset.npy", subset)
    assert sorted(multiset_indices(uids, str(tmp_path / "subset.npy")).tolist()) == [2, 2, 7]
    with pytest.raises(FlytError, match="unreadable subset file"):
        multiset_indices(uids, str(tmp_path / "missing.npy"))


def test_multiset_errors_name_the_problem():
    uids = random_uids(5, np.random.default_rng(0))
    other = random_uids(1, np.random.default_rng(9))
    with pytest.raises(FlytError, match="not in the pool"):
        multiset_indices(uids, uids_to_pairs(other))
    with pytest.raises(FlytError, match="negative count"):
        multiset_indices(uids, {uids[0]: -1})
    with pytest.raises(FlytError, match="out of range"):
        multiset_indices(uids, np.array([5]))
    with pytest.raises(FlytError, match="f0, f1"):
        multiset_indices(uids, np.zeros(2, dtype=[("a", "<u8")]))
    with pytest.raises(FlytError, match="empty"):
        train_student(np.zeros((5, 3), np.float32), np.zeros((5, 2), np.float32), np.array([], np.int64))


def test_evaluate_selection_seeds_mean_std():
    image, text, task = _world(n=400)
    uids = random_uids(len(image), np.random.default_rng(0))
    cfg = StudentConfig(dim=8, samples_seen=2000, batch_size=100)
    good = evaluate_selection(image, text, uids, {u: 1 for u in uids}, [task], cfg, seeds=(0, 1, 2))
    assert len(good["per_seed"]) == 3 and good["selected"] == 400
    vals = [r["synthetic"] for r in good["per_seed"]]
    assert good["mean"]["synthetic"] == pytest.approx(np.mean(vals))
    assert good["std"]["synthetic"] == pytest.approx(np.std(vals))
    assert good["mean"]["synthetic"] > 0.5
    bad = evaluate_selection(image, text[::-1].copy(), uids, {u: 1 for u in uids}, [task], cfg, seeds=(0,))
    assert bad["mean"]["average"] < good["mean"]["average"]


def test_students_trained_together_equal_students_trained_alone():
    """Stacking K students into one batched run changes nothing about each student."""
    from flyt.bench.student import train_students

    image, text, _ = _world()
    rng = np.random.default_rng(3)
    runs = [(rng.integers(0, len(image), size=400), seed) for seed in (0, 1, 2)]
    cfg = StudentConfig(dim=8, samples_seen=3_000, batch_size=128, lr=5e-3)
    together = train_students(image, text, runs, cfg)
    for (idx, seed), joint in zip(runs, together):
        alone = train_student(image, text, idx, cfg, seed=seed)
        for a, b in zip(alone.parameters(), joint.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together[0].image_proj.weight, together[1].image_proj.weight)


def test_copy_detection_counts_rows_sharing_image_bytes():
    """Positives are the rows whose image hash occurs twice or more (copy and original alike); the AUC
    equals counting every (unique-image row, copied row) pair by dedup_distance = 1 - nearest; recall and
    grouped_exact are the shares stated in the docstring."""
    rng = np.random.default_rng(1)
    hashes = [f"h{i}" for i in rng.integers(0, 150, size=200)]  # ~half the rows share their hash
    counts = {h: hashes.count(h) for h in hashes}
    copy = np.array([counts[h] > 1 for h in hashes])
    nearest = np.where(copy, 1.0, np.round(rng.uniform(0.5, 1.0, size=200), 1))  # ties, some at 1.0
    size = np.where(copy | (nearest >= 0.9), 2, 1)
    got = copy_detection(nearest, size, hashes)
    dist = 1.0 - nearest
    unique, copied = dist[~copy], dist[copy]
    brute = ((unique[:, None] > copied[None, :]) + 0.5 * (unique[:, None] == copied[None, :])).mean()
    assert got["rows_with_copy"] == int(copy.sum()) and 0 < got["rows_with_copy"] < 200
    assert got["auc"] == pytest.approx(brute, abs=1e-12) and got["auc"] < 1.0
    assert got["recall"] == 1.0
    assert got["grouped_exact"] == pytest.approx(copy.sum() / (size > 1).sum())
    # a detector that misses the copies: every row with a copy looks unique
    assert copy_detection(np.where(copy, 0.0, 1.0), np.ones(200), hashes)["auc"] == 0.0


def test_defect_auc_matches_counting_every_pair():
    """AUC(clean above defect) equals the fraction of (clean, defect) pairs ordered that way, ties 1/2;
    a perfect detector gives 1, a reversed one 0, NaN scores are left out."""
    rng = np.random.default_rng(0)
    defects = rng.choice(["none", "swapped", "duplicate"], size=300)
    score = np.round(rng.normal(size=300) + (defects == "none"), 1)  # rounded: many ties
    score[:5] = np.nan
    got = defect_auc({"s": score, "perfect": (defects == "none").astype(float)}, defects)
    ok = np.isfinite(score)
    for d in ("swapped", "duplicate"):
        good, bad = score[ok & (defects == "none")], score[ok & (defects == d)]
        brute = ((good[:, None] > bad[None, :]) + 0.5 * (good[:, None] == bad[None, :])).mean()
        assert got["s"][d] == pytest.approx(brute, abs=1e-12)
        assert got["perfect"][d] == 1.0
    assert defect_auc({"r": -(defects == "none").astype(float)}, defects)["r"]["swapped"] == 0.0


def test_student_runs_train_each_distinct_student_once_and_reuse_it(tmp_path, monkeypatch):
    """Two options that draw the same multiset share one student: a batch with repeats trains each
    distinct (multiset, seed) once, and every run gets that student's accuracies; a second call trains none."""
    from types import SimpleNamespace

    import flyt.bench.runs as runs_module

    image, text, task = _world()
    calls = []
    real = runs_module.train_students
    monkeypatch.setattr(runs_module, "train_students", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    cfg = StudentConfig(dim=8, samples_seen=512, batch_size=128)
    students = runs_module.StudentRuns(tmp_path, "key", SimpleNamespace(image=image, text=text), cfg)
    a, b = np.arange(0, 600), np.arange(300, 900)
    runs = [(a, 0), (b, 0), (a.copy(), 0), (a, 1), (b, 0)]
    assert students.todo(runs, "test") == 3
    first = students.evaluate(runs, [task], "test")
    assert calls == [3] and (students.trained, students.cached) == (3, 2)
    assert first[0] == first[2] and first[1] == first[4] and first[0] != first[3]
    assert students.evaluate(runs, [task], "test") == first and calls == [3] and students.todo(runs, "test") == 0


def test_student_runs_choose_by_the_mean_over_seeds_and_summarise_the_test_split(tmp_path):
    """validation_means: each candidate's validation average, the mean over its seeds' students;
    test_summary: one multiset's students of every seed on the test split, with the group averages."""
    from types import SimpleNamespace

    from flyt.bench.evaluate import group_averages, summarise_seeds
    from flyt.bench.runs import StudentRuns

    image, text, task = _world()
    task.validation = task.test
    students = StudentRuns(tmp_path, "key", SimpleNamespace(image=image, text=text),
                           StudentConfig(dim=8, samples_seen=512, batch_size=128))
    a, b = np.arange(0, 600), np.arange(300, 900)
    runs = students.evaluate([(a, 3), (a, 4), (b, 3), (b, 4)], [task], "validation")
    means = students.validation_means([a, b], (3, 4), [task])
    assert means == [np.mean([runs[0]["average"], runs[1]["average"]]), np.mean([runs[2]["average"], runs[3]["average"]])]
    groups = {"average_synthetic": ["synthetic"]}
    expected = summarise_seeds([group_averages(r, groups) for r in students.evaluate([(b, 3), (b, 4)], [task], "test")],
                               (3, 4), b)
    assert students.test_summary(b, (3, 4), [task], groups) == expected
    assert expected["mean"]["average_synthetic"] == pytest.approx(expected["mean"]["synthetic"])
