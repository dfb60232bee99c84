"""M-FLYT's inputs by rank: M-FLYT retrained with z-scores clipped at 3 (the demo's) and with rank inputs.

    FLYT_CACHE=... OMP_NUM_THREADS=1 nice -n 5 python benchmarks/demo_mflyt_transform.py DEMO_OUT

Needs a finished full `flyt demo --out DEMO_OUT`. Reuses its benchmark, teacher, baseline, FLYT and dedup
scores and its students' cache; retrains only M-FLYT (the demo's settings and inputs), once per variant,
into DEMO_OUT/mflyt-transform/:

- ``zscore``: score_transform zscore, score_clip 3 (the demo's M-FLYT, retrained here under the same
  thread settings as the other variant);
- ``rank``: score_transform rank (flyt.models.mixing: each input's mid-rank CDF on the pool, centred,
  within +-sqrt(3); score_clip off, it could not bind).

Each variant's top fraction and SCS penalty are chosen on validation only: every option's validation
average is the mean over VALIDATION_SEEDS students (two per option). The chosen subsets are then
evaluated once, with the demo's student seeds, on the test splits of FLYT's tasks and of the held-out
tasks (demo.final_evaluation(): read here for the first time, after both variants' choices). The
reference rows (no filtering, CLIP score, FLYT) are the demo's own final results (its results.json).
Prints one JSON line per variant (weights, validation of every option, the choices, test averages) and
a markdown table; writes the same to DEMO_OUT/mflyt-transform/summary.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from flyt.bench.protocol import DEDUP_MIX_INPUTS, MIX_INPUTS, best_of_each_kind
from flyt.bench.runs import mixer_weights, train_scorer
from flyt.io.atomic import write_json
from flyt.pipeline.demo import open_finished, scorer_config
from flyt.pipeline.score import score_pool

VARIANTS = {"zscore": {"score_transform": "zscore", "score_clip": 3.0},
            "rank": {"score_transform": "rank", "score_clip": None}}
AVERAGES = ("average_flyt", "average_heldout", "average")
REFERENCES = ("no_filter", "clip_score", "flyt_topk", "flyt_scs")


def main() -> None:
    out = Path(sys.argv[1])
    demo = open_finished(out)
    cfg, raw, students = demo.cfg, demo.raw, demo.students
    vseeds = (cfg.validation_seed, cfg.validation_seed + 1)
    strategies = demo.strategies()
    options = [(s, v) for s in (strategies["mflyt_topk"], strategies["mflyt_scs"]) for v in s.options]
    inputs = [demo.score_dirs["baselines"], demo.score_dirs["flyt"]]
    columns = list(MIX_INPUTS)
    if "dedup" in demo.score_dirs:  # the demo's M-FLYT mixes dedup_nearest too (issue 14)
        inputs.append(demo.score_dirs["dedup"])
        columns += DEDUP_MIX_INPUTS
    root = out / "mflyt-transform"
    picks = {}
    for variant, keys in VARIANTS.items():
        config = {**scorer_config(cfg, "mflyt", demo.teacher_pool, demo.teacher_tasks, columns, inputs), **keys}
        if config["score_clip"] is None:
            del config["score_clip"]
        t = time.perf_counter()
        scorer = train_scorer(config, root / "runs", print, progress=False)
        seconds = time.perf_counter() - t
        scores = root / f"{variant}-scores"
        score_pool(demo.teacher_pool, scores, [str(scorer)], score_dirs=inputs, progress=False)
        context = demo.draw_context({"mflyt": scores})
        indices = [s.draw(v, context).indices(raw.uids) for s, v in options]
        val = students.validation_means(indices, vseeds, demo.tasks)
        chosen = best_of_each_kind(options, val)
        picks[variant] = {
            "keys": keys, "run": str(scorer.parent), "train_s": round(seconds, 1),
            "weights": {k: round(w, 3) for k, w in sorted(mixer_weights(scorer).items(), key=lambda kv: -abs(kv[1]))},
            "val": {" ".join(map(str, s.option(v))): round(a, 4) for (s, v), a in zip(options, val)},
            "val_seeds": list(vseeds), "chosen": chosen, "indices": indices,
        }
        print(f"{variant}: trained in {seconds:.0f}s, validation done; chose "
              + ", ".join(" ".join(map(str, options[i][0].option(options[i][1]))) for i in chosen.values()), flush=True)

    # The final evaluation: only now are the held-out tasks read.
    tasks, finals, groups = demo.final_evaluation()
    summary = {"validation_seeds": list(vseeds), "test_seeds": list(cfg.seeds), "variants": {}}
    for variant, p in picks.items():
        test = {}
        for kind, best in p["chosen"].items():
            idx = p["indices"][best]
            res = finals.test_summary(idx, cfg.seeds, tasks, groups)
            test[kind] = {"option": options[best][0].option(options[best][1]),
                          **{a: [round(res["mean"][a], 4), round(res["std"][a], 4)] for a in AVERAGES}}
        row = {k: v for k, v in p.items() if k not in ("indices", "chosen")} | {"test": test}
        summary["variants"][variant] = row
        print(json.dumps({"variant": variant, **row}), flush=True)

    demo_results = json.loads((out / "results.json").read_text())["results"]
    summary["references"] = {name: {"option": demo_results[name]["chosen"]["option"],
                                    **{a: [round(demo_results[name]["mean"][a], 4), round(demo_results[name]["std"][a], 4)]
                                       for a in AVERAGES}}
                             for name in REFERENCES if name in demo_results}
    summary["margins"] = margins(summary)
    write_json(summary, root / "summary.json")
    print(markdown(summary))


def margins(summary: dict) -> dict:
    """Each variant's M-FLYT + SCS (and top fraction) against no filtering, CLIP score and FLYT (the same
    kind) on each average: margin in points and whether it exceeds the larger seed std (the report's rule)."""
    refs, out = summary["references"], {}
    for variant, row in summary["variants"].items():
        for kind, versus in (("scs", ("no_filter", "clip_score", "flyt_scs")),
                             ("topk", ("no_filter", "clip_score", "flyt_topk"))):
            for ref in versus:
                if ref not in refs:
                    continue
                for a in AVERAGES:
                    (m, s), (rm, rs) = row["test"][kind][a], refs[ref][a]
                    out[f"{variant} {kind} vs {ref} {a}"] = {"margin": round(100 * (m - rm), 2),
                                                             "beyond_spread": bool(m - rm > max(s, rs))}
    return out


def markdown(summary: dict) -> str:
    lines = ["| M-FLYT inputs | strategy | chosen on validation | FLYT's tasks | held-out | all |", "|---|---|---|---|---|---|"]
    cell = lambda ms: f"{100 * ms[0]:.1f} +- {100 * ms[1]:.1f}"  # noqa: E731
    for variant, row in summary["variants"].items():
        for kind, label in (("topk", "M-FLYT, top fraction"), ("scs", "M-FLYT + SCS")):
            t = row["test"][kind]
            lines.append(f"| {variant} | {label} | {' '.join(map(str, t['option']))} | "
                         + " | ".join(cell(t[a]) for a in AVERAGES) + " |")
    for name, r in summary["references"].items():
        lines.append(f"| (demo) | {name} | {' '.join(map(str, r['option']))} | " + " | ".join(cell(r[a]) for a in AVERAGES) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
