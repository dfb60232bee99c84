"""Validation-only tasks as the validation objective: does choosing on them change the held-out verdicts?

    FLYT_CACHE=... OMP_NUM_THREADS=1 nice -n 5 python benchmarks/demo_valtasks.py DEMO_OUT [SEEDS]

Needs a finished full `flyt demo --out DEMO_OUT`. Reuses its benchmark, teacher, scores (FLYT's and
M-FLYT's: nothing is retrained) and its final students' cache; builds the validation-only tasks
(flyt.bench.valtasks: ``logo_names``, ``object_names``) beside the benchmark, once. Then:

1. every option of every demo strategy (baselines included) is drawn as the demo draws it;
2. one student per option and validation seed (SEEDS, default ``100,101``: the demo's validation seed and
   one more) is trained and evaluated on the validation splits of FLYT's five tasks and of the
   validation-only tasks (cached in DEMO_OUT/valtasks/students);
3. each strategy's option is chosen (flyt.bench.protocol.best_option) on each OBJECTIVE: the mean over
   the validation seeds of the unweighted average over the objective's tasks:
   - ``flyt``: FLYT's 5 tasks, 1/5 each (the demo's objective, here with 2 seeds);
   - ``flyt+valonly``: FLYT's 5 tasks and the 2 validation-only tasks, 1/7 each;
   - ``valonly``: the 2 validation-only tasks, 1/2 each (for the record);
4. the final evaluation, ``demo.final_evaluation()``, the only place the held-out tasks are read (after
   every choice above): each chosen subset, the demo's student seeds, the test splits of FLYT's tasks and
   of the held-out tasks. The validation-only tasks have no test split and are in no final average.

Writes DEMO_OUT/valtasks/results.json and results.md (the table) and prints the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from flyt.bench.protocol import best_option
from flyt.bench.results import AVERAGES, LEARNED, REFERENCES, comparisons
from flyt.bench.runs import StudentRuns
from flyt.bench.valtasks import build_valonly_tasks, load_valonly_tasks, valonly_key
from flyt.io.atomic import write_json, write_text
from flyt.io.cache import cache_key
from flyt.pipeline.demo import FinishedDemo, open_finished, student_bar
from flyt.progress import quiet

OBJECTIVES = {"flyt": "FLYT's tasks", "flyt+valonly": "FLYT's tasks + validation-only tasks",
              "valonly": "validation-only tasks"}


def objective_tasks(flyt_tasks: list[str], valonly: list[str]) -> dict[str, list[str]]:
    """Each objective's tasks; every task in an objective weighs the same."""
    return {"flyt": list(flyt_tasks), "flyt+valonly": list(flyt_tasks) + list(valonly), "valonly": list(valonly)}


def run(demo: FinishedDemo, valtasks: list, seeds=(100, 101), log=print) -> dict:
    """Choose every strategy's option on each objective (validation only), then evaluate the chosen subsets
    once on test (FLYT's tasks and the held-out tasks, read by demo.final_evaluation() here, after every
    choice). Returns what results.json holds."""
    cfg, raw = demo.cfg, demo.raw
    strategies = list(demo.strategies().values())
    context = demo.draw_context()
    with quiet():
        drawn = {s.name: [s.draw(v, context) for v in s.options] for s in strategies}
    names = [t.name for t in demo.tasks]
    val_names = [t.name for t in valtasks]
    key = cache_key(demo.key, "validation-only tasks", valonly_key(demo.bench_dir), names + val_names)
    students = StudentRuns(cfg.out / "valtasks" / "students", key, raw, cfg.student)
    grid = [(s.name, i) for s in strategies if s.chooses for i in range(len(s.options))]
    candidates, seeds = [drawn[name][i].indices(raw.uids) for name, i in grid], [int(seed) for seed in seeds]
    with student_bar(students, [(c, seed) for c in candidates for seed in seeds], "validation", cfg) as bar:
        per_option = dict(zip(grid, students.per_seed(candidates, seeds, demo.tasks + valtasks, "validation", bar)))
    log(f"validation: {len(grid)} options x {len(seeds)} seeds ({students.trained} students trained, "
        f"{students.cached} cached)")

    check = _same_as_demo(demo, grid, drawn, per_option, seeds)
    objectives = objective_tasks(names, val_names)
    chosen, validation = {}, {}
    for obj, tasks in objectives.items():
        chosen[obj], validation[obj] = {}, {}
        for s in strategies:
            accs = [None if (s.name, i) not in per_option else
                    float(np.mean([np.mean([r[t] for t in tasks]) for r in per_option[s.name, i]]))
                    for i in range(len(s.options))]
            best = best_option(accs)
            chosen[obj][s.name] = best
            validation[obj][s.name] = [{"option": s.option(v), "val_average": a} for v, a in zip(s.options, accs)]
        log(f"objective {obj}: " + ", ".join(f"{s.name} {tuple(s.option(s.options[chosen[obj][s.name]]))}"
                                             for s in strategies if s.chooses))

    # The final evaluation: only now are the held-out tasks read.
    tasks, finals, groups = demo.final_evaluation()
    log(f"final evaluation: test splits of {', '.join(t.name for t in tasks)}")
    picks = {(s.name, chosen[obj][s.name]) for obj in objectives for s in strategies}
    test_runs = [(drawn[n][i].indices(raw.uids), seed) for n, i in sorted(picks) for seed in cfg.seeds]
    tested = {}
    with student_bar(finals, test_runs, "test", cfg) as bar:
        for n, i in sorted(picks):
            indices = drawn[n][i].indices(raw.uids)
            tested[n, i] = finals.test_summary(indices, cfg.seeds, tasks, groups, bar)
    by_name = {s.name: s for s in strategies}
    results = {}
    for obj in objectives:
        res = {}
        for n, i in chosen[obj].items():
            s = by_name[n]
            res[n] = {**tested[n, i], "label": s.label,
                      "chosen": {"option": s.option(s.options[i]),
                                 "val_average": validation[obj][n][i]["val_average"]}}
        results[obj] = {"tasks": objectives[obj], "results": res, "validation": validation[obj],
                        "comparisons": {a: comparisons(res, a) for a in AVERAGES}}
    return {"seeds": {"validation": list(seeds), "test": list(cfg.seeds)}, "flyt_tasks": names,
            "valonly_tasks": val_names, "final_tasks": [t.name for t in tasks], "groups": groups,
            "objectives": results, "demo_seed_check": check}


def _same_as_demo(demo: FinishedDemo, grid: list, drawn: dict, per_option: dict, seeds) -> dict:
    """Where the demo's own validation students (its validation seed, FLYT's tasks) are cached: the largest
    difference between their accuracies and this run's students of the same option and seed (0 when the
    student training is reproducible). Trains nothing."""
    seed = demo.cfg.validation_seed
    if seed not in seeds:
        return {}
    runs = [(drawn[name][i].indices(demo.raw.uids), seed) for name, i in grid]
    if demo.students.todo(runs, "validation"):
        return {"cached": False}
    theirs = demo.students.evaluate(runs, demo.tasks, "validation")
    ours = [per_option[g][list(seeds).index(seed)] for g in grid]
    diff = max(abs(a[t.name] - b[t.name]) for a, b in zip(theirs, ours) for t in demo.tasks)
    return {"cached": True, "students": len(runs), "max_abs_difference": diff}


def _pct(res: dict, average: str) -> str:
    return f"{100 * res['mean'][average]:.1f} +- {100 * res['std'][average]:.1f}"


def _option(res: dict) -> str:
    return " ".join(map(str, res["chosen"]["option"])) if res["chosen"]["option"] != ["all"] else "-"


def markdown(data: dict, shown=("flyt", "flyt+valonly")) -> str:
    """The table (a row per strategy; per objective: its choice and the three test averages) and the held-out
    verdicts of each learned strategy against no filtering and CLIP score under each objective."""
    objs = data["objectives"]
    first = objs[shown[0]]["results"]
    head = ["strategy"] + [f"{c} ({o})" for o in shown for c in ("chosen", "FLYT's tasks", "held-out", "all")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in first.items():
        cells = [r["label"]]
        for o in shown:
            res = objs[o]["results"][name]
            cells += [_option(res), _pct(res, "average_flyt"), _pct(res, "average_heldout"), _pct(res, "average")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| learned | vs | " + " | ".join(f"held-out margin ({o})" for o in shown) + " |",
              "|---|---|" + "---|" * len(shown)]
    for name in (n for n in LEARNED if n in first):
        for ref in (r for r in REFERENCES if r in first):
            cells = []
            for o in shown:
                c = objs[o]["comparisons"]["average_heldout"][name][ref]
                word = "beyond spread" if c["beyond_spread"] else ("within spread" if c["beats"] else "below")
                cells.append(f"{100 * c['margin']:+.1f} ({word})")
            lines.append(f"| {first[name]['label']} | {first[ref]['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path(sys.argv[1])
    seeds = tuple(int(s) for s in sys.argv[2].split(",")) if len(sys.argv) > 2 else (100, 101)
    demo = open_finished(out)
    from flyt.encoders import get_encoder

    build_valonly_tasks(get_encoder("offline"), demo.bench_dir, progress=demo.cfg.progress)
    data = run(demo, load_valonly_tasks(demo.bench_dir), seeds)
    write_json(data, out / "valtasks" / "results.json")
    table = markdown(data)
    write_text(table, out / "valtasks" / "results.md")
    print(table)
    print(json.dumps({"demo_seed_check": data["demo_seed_check"]}))


if __name__ == "__main__":
    main()
