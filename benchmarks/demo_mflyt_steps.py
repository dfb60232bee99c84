"""M-FLYT training length and seed on the demo's benchmark: validation (for the choice) and test (to report).

    flock /tmp/flyt-bench.lock python benchmarks/demo_mflyt_steps.py DEMO_OUT '[{"steps": 300, "seed": 0}, ...]'

Needs a finished `flyt demo --out DEMO_OUT` (full mode): reuses its benchmark, teacher, baseline scores
and FLYT scores; retrains only M-FLYT, once per variant (keys override the demo's M-FLYT training
config), into DEMO_OUT/mflyt-variants/. Per variant prints one JSON line: the learned weights, the
validation accuracy of every top-fraction and SCS option (one student each, as the demo chooses), and
the test accuracy (3 seeds) of the option validation chose. Choose on the "val" fields only.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flyt.pipeline import demo as D
from flyt.pipeline.score import score_pool
from flyt.train.loop import train


def main() -> None:
    out, variants = Path(sys.argv[1]), json.loads(sys.argv[2])
    demo = D.open_finished(out)
    cfg, raw, students = demo.cfg, demo.raw, demo.students
    teacher_pool = demo.teacher_dir / "pool"
    teacher_tasks = sorted(str(p) for p in (demo.teacher_dir / "tasks").iterdir())
    base, flyt_scores = demo.score_dirs["baselines"], demo.score_dirs["flyt"]
    options = [("topk", f) for f in cfg.fractions] + [("scs", d) for d in cfg.penalties]
    for variant in variants:
        name = hashlib.sha1(json.dumps(variant, sort_keys=True).encode()).hexdigest()[:8]
        run = out / "mflyt-variants" / name
        config = {"mode": "mflyt", "pool": str(teacher_pool), "tasks": teacher_tasks, "steps": cfg.mflyt_steps,
                  "upstream_batch": cfg.upstream_batch, "downstream_batch": cfg.downstream_batch,
                  "scorer_lr": cfg.scorer_lr, "reference_lr": cfg.reference_lr, "warmup_steps": 20,
                  "score_columns": D.MIX_INPUTS, "scores": [str(base), str(flyt_scores)],
                  "checkpoint_every": 10_000, "out": str(run), **variant}
        t = time.perf_counter()
        if not (run / "scorer.pt").is_file():
            train(config, progress=False)
        seconds = time.perf_counter() - t
        scores = out / "mflyt-variants" / f"{name}-scores"
        score_pool(teacher_pool, scores, [str(run / "scorer.pt")], score_dirs=[base, flyt_scores], progress=False)
        mixer = torch.load(run / "scorer.pt", weights_only=True)
        weights = dict(zip(mixer["model"]["columns"], mixer["state_dict"]["linear.weight"].reshape(-1).tolist()))
        dirs = {"baselines": base, "mflyt": scores}
        indices = [D._indices(raw, D._draw("mflyt", o, dirs, cfg, len(raw))) for o in options]
        val = [r["average"] for r in students.evaluate([(i, cfg.validation_seed) for i in indices], demo.val_tasks, "validation")]
        test = {}
        for kind in ("topk", "scs"):
            best = max((i for i, o in enumerate(options) if o[0] == kind), key=lambda i: val[i])
            runs = students.evaluate([(indices[best], s) for s in cfg.seeds], demo.test_tasks, "test")
            acc = [r["average"] for r in runs]
            test[kind] = {"option": list(options[best]), "mean": round(float(np.mean(acc)), 4),
                          "std": round(float(np.std(acc)), 4)}
        print(json.dumps({
            "variant": variant, "train_s": round(seconds, 1),
            "weights": {k: round(w, 3) for k, w in sorted(weights.items(), key=lambda kv: -abs(kv[1]))},
            "val": {f"{o[0]} {o[1]}": round(a, 4) for o, a in zip(options, val)},
            "test_chosen_on_val": test,
        }), flush=True)


if __name__ == "__main__":
    main()
