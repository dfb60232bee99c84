"""M-FLYT training length and seed on the demo's benchmark: validation (for the choice) and test (to report).

    flock /tmp/flyt-bench.lock python benchmarks/demo_mflyt_steps.py DEMO_OUT '[{"steps": 300, "seed": 0}, ...]'

Needs a finished `flyt demo --out DEMO_OUT` (full mode): reuses its benchmark, teacher, baseline scores
and FLYT scores; retrains only M-FLYT, once per variant (keys override the demo's M-FLYT training
config), into DEMO_OUT/mflyt-variants/. Per variant prints one JSON line: the learned weights, the
validation accuracy of every top-fraction and SCS option (one student each, as the demo chooses), and
the test accuracy (3 seeds) of the option validation chose. Choose on the "val" fields only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from flyt.bench.protocol import MIX_INPUTS
from flyt.bench.runs import mixer_weights
from flyt.io.cache import cache_key
from flyt.pipeline.demo import open_finished, scorer_config
from flyt.pipeline.score import score_pool
from flyt.training.loop import train


def main() -> None:
    out, variants = Path(sys.argv[1]), json.loads(sys.argv[2])
    demo = open_finished(out)
    cfg, raw, students = demo.cfg, demo.raw, demo.students
    base, flyt_scores = demo.score_dirs["baselines"], demo.score_dirs["flyt"]
    strategies = demo.strategies()
    # Every top-fraction and SCS option of M-FLYT's score, as (strategy, option value).
    options = [(s, v) for s in (strategies["mflyt_topk"], strategies["mflyt_scs"]) for v in s.options]
    for variant in variants:
        name = cache_key(variant, length=8)
        run = out / "mflyt-variants" / name
        config = {**scorer_config(cfg, "mflyt", demo.teacher_pool, demo.teacher_tasks, MIX_INPUTS, [base, flyt_scores]),
                  "checkpoint_every": 10_000, "out": str(run), **variant}
        t = time.perf_counter()
        if not (run / "scorer.pt").is_file():
            train(config, progress=False)
        seconds = time.perf_counter() - t
        scores = out / "mflyt-variants" / f"{name}-scores"
        score_pool(demo.teacher_pool, scores, [str(run / "scorer.pt")], score_dirs=[base, flyt_scores], progress=False)
        weights = mixer_weights(run / "scorer.pt")
        context = demo.draw_context({"mflyt": scores})
        indices = [s.draw(v, context).indices(raw.uids) for s, v in options]
        runs = [(i, cfg.validation_seed) for i in indices]
        val = [r["average"] for r in students.evaluate(runs, demo.tasks, "validation")]
        test = {}
        for kind in ("topk", "scs"):
            best = max((i for i, (s, _) in enumerate(options) if s.kind == kind), key=lambda i: val[i])
            strategy, value = options[best]
            runs = students.evaluate([(indices[best], seed) for seed in cfg.seeds], demo.tasks, "test")
            acc = [r["average"] for r in runs]
            test[kind] = {"option": strategy.option(value), "mean": round(float(np.mean(acc)), 4),
                          "std": round(float(np.std(acc)), 4)}
        print(json.dumps({
            "variant": variant, "train_s": round(seconds, 1),
            "weights": {k: round(w, 3) for k, w in sorted(weights.items(), key=lambda kv: -abs(kv[1]))},
            "val": {" ".join(map(str, s.option(v))): round(a, 4) for (s, v), a in zip(options, val)},
            "test_chosen_on_val": test,
        }), flush=True)


if __name__ == "__main__":
    main()
