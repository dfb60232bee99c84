"""`flyt demo` end to end, CI-sized: the real pipeline (benchmark builder, teacher, baseline scorers,
FLYT, M-FLYT, sampling, students, evaluation, report) on a benchmark of ~300 generated pairs, four
FLYT tasks and four held-out tasks."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from _demo_helpers import EVENTS, POOL_PER_SOURCE, SEEDS, STUDENT_SAMPLES, tiny_config, tiny_demo_run
from flyt.bench.strategies import BASELINES
from flyt.io.pool import load_pool
from flyt.io.uids import UID_DTYPE, uids_to_pairs
from flyt.pipeline.demo import run_demo

LEARNED = {"flyt_topk", "flyt_scs", "mflyt_topk", "mflyt_scs", "flyt_scs_floor", "mflyt_scs_floor", "mflyt_scs_groups"}
STRATEGIES = {"no_filter", "random", *BASELINES, *LEARNED}
TASKS = ["digits", "emoji_names", "fashion_mnist", "fluent_subgroups", "openmoji_groups"]
HELDOUT = ["animal_names", "chess_pieces", "country_flags", "icon_categories"]
AVERAGES = ["average_flyt", "average_heldout", "average"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return tiny_demo_run(tmp_path_factory)


def test_benchmark_is_a_few_hundred_pairs_with_defects(demo):
    bench, _, summary, _ = demo
    pool = summary["benchmark"]["pool"]
    assert 5 * POOL_PER_SOURCE <= pool["rows"] <= 400
    assert len(pool["by_source_defect"]) == 5
    defects = pool["by_defect"]
    assert {"swapped", "duplicate", "foreign", "boilerplate", "filename", "none"} <= set(defects)
    assert sorted(p.name for p in (bench / "tasks").iterdir()) == TASKS
    assert sorted(p.name for p in (bench / "heldout_tasks").iterdir()) == HELDOUT
    for name in HELDOUT:  # no train split exists that anything could read
        assert not (bench / "heldout_tasks" / name / "train.parquet").exists()
        assert (bench / "heldout_tasks" / name / "test.parquet").is_file()


def test_results_json_has_every_strategy_per_task_with_spread(demo):
    _, out, summary, _ = demo
    saved = json.loads((out / "results.json").read_text())
    assert saved["tasks"] == TASKS and saved["heldout_tasks"] == HELDOUT and saved["protocol"]["seeds"] == list(SEEDS)
    assert set(saved["results"]) == STRATEGIES
    groups = {"average_flyt": TASKS, "average_heldout": HELDOUT, "average": TASKS + HELDOUT}
    for name, r in saved["results"].items():
        for stat in ("mean", "std"):
            assert set(r[stat]) == set(TASKS) | set(HELDOUT) | set(AVERAGES), name
            assert all(0 <= v <= 1 and math.isfinite(v) for v in r[stat].values()), (name, stat)
        # each average is per seed first (unweighted over its tasks); its spread is over those per-seed values
        for average, tasks in groups.items():
            per_seed = [np.mean([run[t] for t in tasks]) for run in r["per_seed"]]
            assert [run[average] for run in r["per_seed"]] == pytest.approx(per_seed), (name, average)
            assert r["mean"][average] == pytest.approx(np.mean(per_seed))
            assert r["std"][average] == pytest.approx(np.std(per_seed))
    # each learned strategy against no filtering and CLIP score, on every average, from the table's numbers
    for average in AVERAGES:
        found = saved["comparisons"][average]
        assert set(found) == LEARNED
        for name, refs in found.items():
            assert set(refs) == {"no_filter", "clip_score"}
            for ref, c in refs.items():
                mine, theirs = saved["results"][name], saved["results"][ref]
                assert c["margin"] == pytest.approx(mine["mean"][average] - theirs["mean"][average])
                assert c["beats"] == (c["margin"] > 0)
                spread = max(mine["std"][average], theirs["std"][average])
                assert c["beyond_spread"] == (c["margin"] > spread)
    # Options were chosen on validation from the configured grids, with real (finite) accuracies.
    cfg = tiny_config(out, None)
    for name in STRATEGIES - {"no_filter", "random"}:
        chosen = saved["results"][name]["chosen"]
        grid = cfg.penalties if "_scs" in name else cfg.fractions
        if name.endswith("_floor"):  # every CLIP-score floor q crossed with every penalty
            grid = [[q, p] for q in cfg.floor_quantiles for p in cfg.penalties]
        value = chosen["option"][1:] if name.endswith("_floor") else chosen["option"][1]
        assert value in grid and math.isfinite(chosen["val_average"]), name
        tried = saved["validation"][name]
        assert [t["option"][1:] if name.endswith("_floor") else t["option"][1] for t in tried] == list(grid)
        assert chosen["val_average"] == max(t["val_average"] for t in tried)
    assert set(saved["mflyt_weights"]) >= {"flyt", "clip_score", "caption_words", "dedup_nearest"}
    assert set(saved["verdict"]) >= {"mflyt_scs_beats_every_single_baseline", "flyt_beats_clip_score"}


def test_subsets_are_datacomp_subsets_of_the_pool(demo):
    bench, out, summary, _ = demo
    pool_pairs = np.sort(uids_to_pairs(load_pool(bench / "pool").uids), order=["f0", "f1"])
    n = len(pool_pairs)
    scores = {}
    for sub in [p.name for p in sorted((out / "scores").glob("*-*"))]:
        t = pq.read_table(out / "scores" / sub)
        key = uids_to_pairs(t.column("uid").to_pylist())
        scores.update({c: dict(zip(key.tolist(), t.column(c).to_numpy())) for c in t.column_names if c != "uid"})
    for name in STRATEGIES:
        a = np.load(out / "subsets" / f"{name}.npy")
        assert a.dtype == UID_DTYPE and a.ndim == 1, name
        assert np.array_equal(a, np.sort(a, order=["f0", "f1"])), f"{name}: not sorted"
        assert np.isin(a, pool_pairs).all(), f"{name}: uids outside the pool"
        option = summary["results"][name]["chosen"]["option"]
        kind = option[0]
        if kind in ("scs", "scs_groups", "scs_floor"):  # SCS draws exactly the samples-seen budget, with repeats
            assert len(a) == STUDENT_SAMPLES and len(np.unique(a)) < len(a), name
            if kind == "scs_floor" and option[1] > 0:  # nothing from the bottom q by CLIP score
                cut = np.sort(list(scores["clip_score"].values()))[int(option[1] * n)]
                assert min(scores["clip_score"][k] for k in set(a.tolist())) >= cut, name
        elif kind == "topk":  # the top fraction, each once, and truly the top by its score
            assert len(a) == len(np.unique(a)) == int(option[1] * n), name
            column = {"flyt_topk": "flyt", "mflyt_topk": "mflyt"}.get(name, name)
            chosen = set(a.tolist())
            inside = [v for k, v in scores[column].items() if k in chosen]
            outside = [v for k, v in scores[column].items() if k not in chosen]
            assert min(inside) >= max(outside), name
        elif kind == "all":
            assert np.array_equal(a, pool_pairs)
        else:
            assert len(a) == len(np.unique(a)) == int(option[1] * n)


def test_results_md_and_report(demo):
    _, out, summary, _ = demo
    md = (out / "results.md").read_text()
    averages = ["average: FLYT's tasks", "average: held-out tasks", "average: all tasks"]
    assert "| strategy | chosen on validation | " + " | ".join(TASKS + HELDOUT + averages) + " |" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "+-" in line]
    assert len(rows) == len(STRATEGIES)
    assert {r["label"] for r in summary["results"].values()} == {row.split(" | ")[0][2:] for row in rows}
    assert all(line.count("+-") == len(TASKS) + len(HELDOUT) + 3 for line in rows)
    assert "M-FLYT + SCS" in md and "FLYT" in md and "CLIP-score" in md
    # one plain sentence per learned strategy on the held-out average, against both references
    labels = {n: r["label"] for n, r in summary["results"].items()}
    for name in ("flyt_topk", "flyt_scs", "mflyt_topk", "mflyt_scs"):
        (line,) = [x for x in md.splitlines() if x.startswith(f"- Held-out average, {labels[name]}:")]
        assert f"vs {labels['no_filter']} " in line and f"vs {labels['clip_score']} " in line
        assert line.count("beats it") + line.count("does NOT beat it") == 2
    report = (out / "report.html").read_text()
    results_table, rest = report.split("</table>", 1)
    assert results_table.count("<tr>") == 1 + len(STRATEGIES)  # the results table, as an HTML table
    # the scores as defect detectors: one row per score column, read from results.json
    auc = summary["defect_auc"]
    assert {"flyt", "mflyt", "clip_score"} <= set(auc) and "Which defects each score detects" in rest
    assert all(0 <= v <= 1 for row in auc.values() for v in row.values())
    assert rest.split("</table>", 1)[0].count("<tr>") == 1 + len(auc)
    assert report.count("data:image/png;base64,") >= 8 + 2 * 12  # plots + top/bottom thumbnails


def test_second_run_reuses_the_caches(demo):
    bench, out, summary, _ = demo
    scorers = sorted((out / "runs").glob("*/scorer.pt"))
    assert [p.parent.name.split("-")[0] for p in scorers] == ["flyt", "mflyt"]
    (teacher,) = out.glob("teacher-*")
    stamps = {p: p.stat().st_mtime_ns for p in [*scorers, teacher / "done.json"]}
    lines = []
    again = run_demo(tiny_config(out, bench), printer=lines.append)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    text = "\n".join(lines)
    assert "teacher space cached" in text and "flyt: cached" in text and "mflyt: cached" in text
    assert "students: 0 trained" in text  # every validation and test student's accuracies reused
    assert sorted((out / "runs").glob("*/scorer.pt")) == scorers  # nothing retrained elsewhere
    # Same caches, same seeds: the same table.
    assert {k: v["mean"] for k, v in again["results"].items()} == {k: v["mean"] for k, v in summary["results"].items()}


def test_changed_training_settings_do_not_reuse_a_cached_scorer(demo, tmp_path):
    """A run with other FLYT settings (e.g. --quick after a full run) trains its own scorers."""
    import shutil
    from dataclasses import replace

    bench, out, _, _ = demo
    other = tmp_path / "other"
    shutil.copytree(out, other)
    lines = []
    cfg = tiny_config(other, bench)
    run_demo(replace(cfg, flyt_steps=cfg.flyt_steps + 1), printer=lines.append)
    text = "\n".join(lines)
    assert "teacher space cached" in text and "flyt: trained" in text and "mflyt: trained" in text
    assert len(list((other / "runs").glob("flyt-*/scorer.pt"))) == 2


def test_a_rebuilt_benchmark_does_not_reuse_the_teacher_or_baseline_scores(demo, tmp_path):
    """The same --out over a different benchmark (here: another pool seed recorded in benchmark.json)
    trains a new teacher and scores the pool again, instead of reusing scores of other uids."""
    import json
    import shutil

    bench, out, _, _ = demo
    other_bench, other_out = tmp_path / "bench", tmp_path / "out"
    shutil.copytree(bench, other_bench)
    shutil.copytree(out, other_out)
    summary = json.loads((other_bench / "benchmark.json").read_text())
    summary["pool_config"]["seed"] += 1
    (other_bench / "benchmark.json").write_text(json.dumps(summary))
    lines = []
    run_demo(tiny_config(other_out, other_bench), printer=lines.append)
    text = "\n".join(lines)
    assert "teacher space cached" not in text and "baseline scores written" in text
    assert len(list(other_out.glob("teacher-*"))) == 2 and len(list((other_out / "scores").glob("baselines-*"))) == 2


def test_heldout_tasks_are_read_only_by_the_final_evaluation(demo):
    """Recorded in order during the run (tests/_demo_helpers.recording): every file the task reader
    opened, every student evaluation (split, tasks) and every log line. No held-out file is opened, and
    no student is evaluated on a held-out task, before the final evaluation starts, which is after every
    option was chosen on validation; the held-out tasks are then read (test split only) and evaluated."""
    bench, out, _, _ = demo
    heldout_dir = str(bench / "heldout_tasks")
    logs = [(i, e[1]) for i, e in enumerate(EVENTS) if e[0] == "log"]
    (start,) = [i for i, line in logs if "final evaluation: reading the held-out tasks" in line]
    chose = [i for i, line in logs if "strategy " in line and ": chose " in line]
    assert len(chose) == len(STRATEGIES) and max(chose) < start  # every option was chosen before it
    reads = [(i, e[1]) for i, e in enumerate(EVENTS) if e[0] == "read"]
    assert any(i < start for i, _ in reads)  # FLYT's tasks were read (and recorded) before
    early = [p for i, p in reads if i < start and (p.startswith(heldout_dir) or any(h in p for h in HELDOUT))]
    assert not early, f"held-out task files read before the final evaluation: {early}"
    late = {p.removeprefix(heldout_dir + "/") for i, p in reads if i > start and p.startswith(heldout_dir)}
    assert {f"{h}/test.parquet" for h in HELDOUT} <= late and not any("train" in p for p in late)
    evaluations = [(i, e[1], set(e[2])) for i, e in enumerate(EVENTS) if e[0] == "evaluate"]
    validation = [names for i, split, names in evaluations if split == "validation"]
    assert validation and all(names == set(TASKS) for names in validation)
    final = [(i, split, names) for i, split, names in evaluations if names & set(HELDOUT)]
    assert final and all(i > start and split == "test" and names == set(TASKS + HELDOUT) for i, split, names in final)
    # the teacher space (which FLYT, M-FLYT and the downstream-aware baselines train on) has FLYT's tasks only
    (teacher,) = out.glob("teacher-*")
    assert sorted(p.name for p in (teacher / "tasks").iterdir()) == TASKS


def test_scs_above_a_clip_score_floor_is_scs_on_the_pool_without_its_bottom_rows(demo, tmp_path):
    """The floor strategy drops the bottom floor(q n) rows by clip_score, then draws exactly what Soft Cap
    Sampling draws from a score directory that never held those rows; q = 0 is plain SCS."""
    from flyt.bench.strategies import DrawContext, FlooredSoftCapSampling, SoftCapSampling
    from flyt.io.scores import write_score_shard
    from flyt.pipeline.demo import read_scores

    bench, out, _, _ = demo
    raw = load_pool(bench / "pool")
    dirs = {"baselines": next((out / "scores").glob("baselines-*")), "mflyt": next((out / "scores").glob("mflyt-*"))}
    scores = read_scores(dirs, raw.uids)
    context = DrawContext(raw.uids, dirs, STUDENT_SAMPLES, 0)
    floored, plain = FlooredSoftCapSampling("f", "f", "mflyt"), SoftCapSampling("p", "p", "mflyt")
    same = lambda a, b: np.array_equal(a.pairs, b.pairs) and np.array_equal(a.counts, b.counts)  # noqa: E731
    assert same(floored.draw((0.0, 0.15), context), plain.draw(0.15, context))
    assert floored.draw_key((0.0, 0.15)) == plain.draw_key(0.15) != floored.draw_key((0.1, 0.15))  # one student
    n, order = len(raw.uids), np.argsort(scores["clip_score"], kind="stable")
    ranked = scores["clip_score"][order]
    cut = next(i for i in range(n // 3, n) if ranked[i - 1] < ranked[i])  # the tiny pool has ties: cut between two values
    q = (cut + 0.5) / n
    kept = np.sort(order[int(q * n):])
    write_score_shard(tmp_path / "kept", "part-00000", raw.uids[kept], {"mflyt": scores["mflyt"][kept]})
    drawn = floored.draw((q, 0.15), context)
    expected = plain.draw(0.15, DrawContext(raw.uids, {**dirs, "mflyt": tmp_path / "kept"}, STUDENT_SAMPLES, 0))
    assert same(drawn, expected) and drawn.counts.sum() == STUDENT_SAMPLES
    dropped = set(uids_to_pairs(raw.uids[order[:int(q * n)]], "pool").tolist())
    assert dropped and not dropped & set(drawn.pairs.tolist())
    assert not same(drawn, plain.draw(0.15, context))  # the floor changed the draw


def test_dedup_and_contamination_join_the_defect_table_and_grouped_scs_counts_per_group(demo):
    """dedup (on the pool's image embeddings) puts every injected exact copy in a group with dedup_nearest
    1 (the tiny pool's 8-d fake embeddings make most rows near copies, so its AUC is not the real pool's);
    the defect table's dedup_distance AUC is the one computed from these scores; contamination is scored
    against FLYT's tasks' test images only. Group-aware SCS draws the budget and differs from plain SCS
    at the same penalty (copies of a group share one cap)."""
    from flyt.bench.evaluate import defect_auc
    from flyt.bench.protocol import pool_metadata
    from flyt.bench.strategies import DrawContext, GroupedSoftCapSampling, SoftCapSampling
    from flyt.pipeline.demo import read_scores

    bench, out, summary, _ = demo
    raw = load_pool(bench / "pool")
    meta = pool_metadata(bench / "pool", raw.uids)
    (dedup_dir,) = (out / "scores").glob("dedup-*")
    scores = read_scores({"baselines": dedup_dir}, raw.uids)
    defect = np.asarray(meta.column("defect").to_pylist())
    copies = defect == "duplicate"
    assert copies.any() and (scores["dedup_group_size"][copies] >= 2).all() and (scores["dedup_nearest"][copies] == 1).all()
    assert np.isfinite(scores["contamination_max"]).all() and (np.abs(scores["contamination_max"]) <= 1 + 1e-5).all()
    expected = defect_auc({"dedup_distance": 1 - scores["dedup_nearest"]}, defect)["dedup_distance"]
    assert summary["defect_auc"]["dedup_distance"] == pytest.approx(expected)
    assert "contamination_distance" in summary["defect_auc"] and "dedup_group" not in summary["defect_auc"]
    assert summary["dedup"]["rows_in_groups"] == int((scores["dedup_group_size"] > 1).sum())
    assert summary["defect_auc"]["dedup_distance"]["duplicate"] <= summary["dedup"]["duplicate_auc_ceiling"] + 1e-12
    # judged on rows that have an exact copy (copy and original alike), dedup finds them all, ranked first
    sha = meta.column("image_sha1").to_pylist()
    shared = np.array([sha.count(h) > 1 for h in sha])
    found = summary["dedup"]["copy_detection"]
    assert found["rows_with_copy"] == int(shared.sum()) >= int(copies.sum())
    assert found["recall"] == 1.0 and (scores["dedup_nearest"][shared] == 1).all()
    # (the test encoder maps distinct flat-colour images to one embedding, so unique images tie here too:
    # the AUC is checked by counting pairs; on the real benchmark it is 0.9996, docs/demo.md)
    unique, copied = 1 - scores["dedup_nearest"][~shared], 1 - scores["dedup_nearest"][shared]
    pairs = ((unique[:, None] > copied[None, :]) + 0.5 * (unique[:, None] == copied[None, :])).mean()
    assert found["auc"] == pytest.approx(pairs, abs=1e-12)
    report = (out / "report.html").read_text()
    assert "Near-duplicate groups" in report and "rows from" in report
    # drawing: each group's copies counted together changes the draw; the budget is still exact
    dirs = {"baselines": next((out / "scores").glob("baselines-*")), "dedup": dedup_dir,
            "mflyt": next((out / "scores").glob("mflyt-*"))}
    context = DrawContext(raw.uids, dirs, STUDENT_SAMPLES, 0)
    grouped = GroupedSoftCapSampling("g", "g", "mflyt").draw(0.5, context)
    plain = SoftCapSampling("p", "p", "mflyt").draw(0.5, context)
    assert grouped.counts.sum() == plain.counts.sum() == STUDENT_SAMPLES
    assert not (np.array_equal(grouped.pairs, plain.pairs) and np.array_equal(grouped.counts, plain.counts))


def test_open_finished_reopens_a_pipeline_seeds_own_run(demo, tmp_path):
    """A robustness seed's run (its own teacher, baseline scores and scorers) is reopened with its own
    directories, not the demo's (seed 0) ones: the scores read back are the ones that run drew from."""
    from dataclasses import replace

    from flyt.pipeline.demo import open_finished, read_scores

    bench, out, _, _ = demo
    seeded = replace(tiny_config(tmp_path / "seed1", bench), pipeline_seed=1, progress=False)
    run_demo(seeded, printer=lambda *_: None)
    first, again = open_finished(out, cfg=tiny_config(out, bench)), open_finished(seeded.out, cfg=seeded)
    assert again.teacher_dir.is_dir() and again.teacher_dir.name != first.teacher_dir.name
    for column in ("baselines", "flyt", "mflyt"):
        assert again.score_dirs[column].parent == seeded.out / "scores"
        assert again.score_dirs[column].name != first.score_dirs[column].name, column
    ours = read_scores({"baselines": next((seeded.out / "scores").glob("baselines-*"))}, again.raw.uids)
    assert np.array_equal(again.scores()["clip_score"], ours["clip_score"])
    assert not np.array_equal(again.scores()["clip_score"], first.scores()["clip_score"])
