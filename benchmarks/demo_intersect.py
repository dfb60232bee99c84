"""Does removing low-CLIP-score pairs from FLYT's / M-FLYT's SCS draw help? (An experiment on the demo.)

    FLYT_CACHE=... flock /tmp/flyt-bench.lock python benchmarks/demo_intersect.py DEMO_OUT [COLUMN ...]

Needs a finished full `flyt demo --out DEMO_OUT`. For each learned score column (default: flyt, mflyt)
the pairs whose teacher CLIP score is in the bottom q of the pool are excluded from Soft Cap Sampling
(q in 0 / 0.1 / 0.2 / 0.3; q = 0 is plain SCS), crossed with the demo's SCS penalties. The demo's
choice rule picks (q, penalty) on validation (one student each); the chosen option and plain SCS (its
own best penalty) are then evaluated on test with 3 student seeds. Choose on the "val" fields only.
Students are cached in DEMO_OUT/students like the demo's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from flyt.bench.strategies import SoftCapSampling
from flyt.io.scores import write_score_shard
from flyt.pipeline.demo import open_finished

QUANTILES = (0.0, 0.1, 0.2, 0.3)


def main() -> None:
    out = Path(sys.argv[1])
    columns = sys.argv[2:] or ["flyt", "mflyt"]
    run = open_finished(out)
    cfg, raw, students = run.cfg, run.raw, run.students
    scores = run.scores()
    clip = scores["clip_score"]
    scs = SoftCapSampling("masked_scs", "masked score + Soft Cap Sampling", "masked", tuple(cfg.penalties))
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
        runs = [(i, cfg.validation_seed) for i in indices]
        val = [r["average"] for r in students.evaluate(runs, run.tasks, "validation")]
        chosen = max(range(len(options)), key=lambda i: val[i])
        plain = max((i for i, o in enumerate(options) if o[0] == 0.0), key=lambda i: val[i])
        test = {}
        for label, i in (("plain_scs", plain), ("chosen", chosen)):
            acc = [r["average"] for r in students.evaluate([(indices[i], s) for s in cfg.seeds], run.tasks, "test")]
            test[label] = {"option": list(options[i]), "mean": round(float(np.mean(acc)), 4),
                           "std": round(float(np.std(acc)), 4)}
        val_by_option = {f"q={q} penalty={p}": round(a, 4) for (q, p), a in zip(options, val)}
        print(json.dumps({"column": column, "val": val_by_option, "test_chosen_on_val": test}), flush=True)


if __name__ == "__main__":
    main()
