"""What the general task does for FLYT: FLYT trained and chosen with and without ``emoji_names``.

    FLYT_CACHE=... nice -n 5 python benchmarks/demo_general_task.py DEMO_OUT

Needs a finished full `flyt demo --out DEMO_OUT`. Reuses its benchmark, teacher and students' cache;
retrains only FLYT (the demo's settings), once per variant, into DEMO_OUT/general-task/:

- ``without``: FLYT trains on the four narrow tasks' fit splits, and its top fraction / SCS penalty is
  chosen on their validation average (the demo before the general task);
- ``with``: FLYT trains on all five (the demo today), chosen on the five tasks' validation average.

Each variant's options are chosen on validation only (one student per option, the demo's rule); the
chosen subsets are then evaluated once, with the demo's student seeds, on the test splits of the five
tasks and of the held-out tasks (read here for the first time, after both choices). Prints one JSON
line per variant: validation of every option, the choice, and test averages over the four narrow tasks,
the five tasks, the held-out tasks and all tasks (mean, std over student seeds).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from flyt.bench.protocol import best_of_each_kind
from flyt.pipeline.demo import open_finished, scorer_config
from flyt.pipeline.score import score_pool
from flyt.training.loop import train

GENERAL = "emoji_names"


def main() -> None:
    out = Path(sys.argv[1])
    demo = open_finished(out)
    cfg, raw, students = demo.cfg, demo.raw, demo.students
    strategies = demo.strategies()
    options = [(s, v) for s in (strategies["flyt_topk"], strategies["flyt_scs"]) for v in s.options]
    narrow = [t.name for t in demo.tasks if t.name != GENERAL]
    chosen = {}
    for variant, names in (("without", narrow), ("with", [t.name for t in demo.tasks])):
        task_dirs = [d for d in demo.teacher_tasks if Path(d).name in names]
        run = out / "general-task" / variant
        t = time.perf_counter()
        if not (run / "scorer.pt").is_file():
            train({**scorer_config(cfg, "flyt", demo.teacher_pool, task_dirs), "out": str(run),
                   "checkpoint_every": 10_000}, progress=False)
        seconds = time.perf_counter() - t
        scores = out / "general-task" / f"{variant}-scores"
        score_pool(demo.teacher_pool, scores, [str(run / "scorer.pt")], progress=False)
        context = demo.draw_context({"flyt": scores})
        indices = [s.draw(v, context).indices(raw.uids) for s, v in options]
        val_tasks = [t for t in demo.tasks if t.name in names]
        val = students.validation_means(indices, (cfg.validation_seed,), val_tasks)
        chosen[variant] = {kind: (best, indices[best]) for kind, best in best_of_each_kind(options, val).items()}
        chosen[variant]["val"] = {" ".join(map(str, s.option(v))): round(a, 4) for (s, v), a in zip(options, val)}
        chosen[variant]["train_s"] = round(seconds, 1)

    # The final evaluation: only now are the held-out tasks read.
    tasks, finals, groups = demo.final_evaluation()
    groups = {**groups, "average_narrow": narrow}
    for variant, picks in chosen.items():
        test = {}
        for kind in ("topk", "scs"):
            best, idx = picks[kind]
            res = finals.test_summary(idx, cfg.seeds, tasks, groups)
            test[kind] = {"option": options[best][0].option(options[best][1]),
                          **{a: [round(res["mean"][a], 4), round(res["std"][a], 4)]
                             for a in ("average_narrow", "average_flyt", "average_heldout", "average")}}
        print(json.dumps({"variant": variant, "train_s": picks["train_s"], "val": picks["val"], "test": test}),
              flush=True)


if __name__ == "__main__":
    main()
