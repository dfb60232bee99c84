"""Does removing low-CLIP-score pairs from FLYT's / M-FLYT's SCS draw help, on FLYT's and on held-out tasks?

    FLYT_CACHE=... OMP_NUM_THREADS=1 python benchmarks/demo_intersect.py DEMO_OUT [COLUMN ...]

Needs a finished full `flyt demo --out DEMO_OUT`. For each learned score column (default: flyt, mflyt)
the pairs whose teacher CLIP score is in the bottom q of the pool are excluded from Soft Cap Sampling
(q in 0 / 0.1 / 0.2 / 0.3 / 0.5; q = 0 is plain SCS), crossed with the demo's SCS penalties. (q, penalty)
is chosen on FLYT's tasks' validation average over two student seeds (VALIDATION_SEEDS), and plain SCS
gets its own best penalty the same way. Only then are the held-out tasks read (the demo's
final_evaluation): both choices are evaluated on the test splits with the demo's student seeds, and
printed as FLYT-task, held-out and all-task averages (mean, std over student seeds), beside the demo's
CLIP-score and no-filtering rows from DEMO_OUT/results.json. Students are cached in DEMO_OUT/students.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from flyt.bench.protocol import best_option
from flyt.bench.strategies import SoftCapSampling
from flyt.io.scores import write_score_shard
from flyt.pipeline.demo import open_finished

QUANTILES = (0.0, 0.1, 0.2, 0.3, 0.5)
VALIDATION_SEEDS = (100, 101)
AVERAGES = ("average_flyt", "average_heldout", "average")


def main() -> None:
    out = Path(sys.argv[1])
    columns = sys.argv[2:] or ["flyt", "mflyt"]
    run = open_finished(out)
    cfg, raw, students = run.cfg, run.raw, run.students
    scores = run.scores()
    clip = scores["clip_score"]
    scs = SoftCapSampling("masked_scs", "masked score + Soft Cap Sampling", "masked", tuple(cfg.penalties))
    chosen = {}
    for column in columns:
        options, indices = [], []
        for q in QUANTILES:
            # Excluded pairs get a score so low that SCS never draws them (exp(-1e4) underflows to 0).
            masked = np.where(clip >= np.quantile(clip, q), scores[column], -1e4) if q else scores[column]
            directory = out / "intersect" / f"{column}-q{q}"
            write_score_shard(directory, "part-00000", raw.uids, {"masked": masked})
            context = run.draw_context({"masked": directory})
            for penalty in scs.options:
                options.append((q, penalty))
                indices.append(scs.draw(penalty, context).indices(raw.uids))
        val = students.validation_means(indices, VALIDATION_SEEDS, run.tasks)
        best = best_option(val)
        plain = best_option([v if o[0] == 0.0 else None for o, v in zip(options, val)])
        chosen[column] = {"val": {f"q={q} penalty={p}": round(a, 4) for (q, p), a in zip(options, val)},
                          "picks": {"plain_scs": (plain, indices[plain]), "chosen": (best, indices[best])},
                          "options": options}

    # The final evaluation: only now are the held-out tasks read.
    tasks, finals, groups = run.final_evaluation()
    for column, c in chosen.items():
        test = {}
        for label, (i, idx) in c["picks"].items():
            res = finals.test_summary(idx, cfg.seeds, tasks, groups)
            test[label] = {"option": list(c["options"][i]),
                           **{a: [round(res["mean"][a], 4), round(res["std"][a], 4)] for a in AVERAGES}}
        print(json.dumps({"column": column, "val": c["val"], "test_chosen_on_val": test}), flush=True)
    demo = json.loads((out / "results.json").read_text())["results"]
    for name in ("no_filter", "clip_score"):
        print(json.dumps({name: {a: [round(demo[name]["mean"][a], 4), round(demo[name]["std"][a], 4)]
                                 for a in AVERAGES}}), flush=True)

if __name__ == "__main__":
    main()
