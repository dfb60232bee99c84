"""The benchmark's results as data, and their markdown rendering (results.md).

The data is the dict written to results.json:

- ``benchmark``: benchmark.json; ``protocol``: seeds, student and teacher settings, split, grids, steps;
- ``tasks``: FLYT's task names and ``heldout_tasks``: the held-out task names (flyt.bench.heldout),
  in table order;
- ``results``: strategy name -> ``evaluate_selection``'s summary (per_seed, mean, std, seeds, selected,
  unique) plus ``label`` and ``chosen`` (``option`` as ``[kind, value]``, ``val_average``). Besides each
  task, ``mean`` / ``std`` hold the AVERAGES: ``average_flyt`` (FLYT's tasks), ``average_heldout``
  (held-out tasks, absent for a benchmark without them) and ``average`` (all tasks, DataComp's
  headline); each std is the spread over student seeds of that seed's average;
- ``validation``: strategy name -> every option tried, ``[{option, val_average}]`` (FLYT's tasks only);
- ``mflyt_weights``: input column -> M-FLYT weight; ``verdict``: see ``verdict``; ``comparisons``:
  average name -> see ``comparisons``;
- ``defect_auc``: score column -> defect -> AUC; ``timings_s``: stage -> seconds.

The table and its sentences are built here once (``results_table``, ``results_intro``,
``results_notes``, ``weights_note``) and rendered by ``results_markdown`` and, separately, by
flyt.bench.report's HTML.
"""

from __future__ import annotations

from flyt.bench.strategies import BASELINES

TITLE = "flyt demo: results"
# the averages of the table, in its column order: key in mean/std -> what it averages over
AVERAGES = {"average_flyt": "FLYT's tasks", "average_heldout": "held-out tasks", "average": "all tasks"}
# the learned strategies whose held-out results are stated, and what each is compared with
LEARNED = ["flyt_topk", "flyt_scs", "mflyt_topk", "mflyt_scs", "flyt_scs_floor", "mflyt_scs_floor", "mflyt_scs_groups"]
REFERENCES = ["no_filter", "clip_score"]


def verdict(results: dict, average: str = "average_flyt") -> dict:
    """Does M-FLYT + SCS beat every single-score baseline, and FLYT (its better draw) CLIP-score
    filtering, on the ``average`` test accuracy (FLYT's tasks by default: the tasks it trains on); and is
    each margin larger than the seed spread (the larger of the two standard deviations)?"""
    average = average if average in present_averages(results) else "average"  # older results: only "average"

    def stat(name):
        r = results[name]
        return r["mean"][average], r["std"][average]

    singles = [b for b in BASELINES if b in results]
    best_single = max(singles, key=lambda b: stat(b)[0])
    m, ms = stat("mflyt_scs")
    b, bs = stat(best_single)
    f, fs = max(stat("flyt_topk"), stat("flyt_scs"))
    c, cs = stat("clip_score")
    return {
        "average": average,
        "best_single_baseline": best_single,
        "mflyt_scs_beats_every_single_baseline": bool(m > b),
        "mflyt_scs_margin_over_best_single": m - b,
        "margin_exceeds_seed_spread": bool(m - b > max(ms, bs)),
        "flyt_beats_clip_score": bool(f > c),
        "flyt_margin_over_clip_score": f - c,
        "flyt_margin_exceeds_seed_spread": bool(f - c > max(fs, cs)),
    }


def comparisons(results: dict, average: str) -> dict:
    """Each LEARNED strategy against each of REFERENCES on one average: ``{learned: {reference: {mean,
    std, reference_mean, reference_std, margin, beats, beyond_spread}}}``; ``beyond_spread``: the
    margin is positive and larger than the seed spread (the larger of the two standard deviations)."""
    out = {}
    for name in (n for n in LEARNED if n in results):
        m, s = results[name]["mean"][average], results[name]["std"][average]
        out[name] = {}
        for ref in (r for r in REFERENCES if r in results):
            rm, rs = results[ref]["mean"][average], results[ref]["std"][average]
            out[name][ref] = {"mean": m, "std": s, "reference_mean": rm, "reference_std": rs, "margin": m - rm,
                              "beats": bool(m > rm), "beyond_spread": bool(m - rm > max(s, rs))}
    return out


def present_averages(results: dict) -> list[str]:
    """The AVERAGES every strategy's results have, in table order."""
    return [a for a in AVERAGES if all(a in r["mean"] for r in results.values())]


def all_comparisons(results: dict) -> dict:
    """``comparisons`` on every average the results have (results.json's ``comparisons``)."""
    return {a: comparisons(results, a) for a in present_averages(results)}


def results_intro(summary: dict) -> str:
    heldout = summary.get("heldout_tasks") or []
    tasks = (f" FLYT's tasks (FLYT and M-FLYT train on their fit splits; every option is chosen on their "
             f"validation splits): {', '.join(summary['tasks'])}.")
    if heldout:
        tasks += (f" Held-out tasks (read only by this final evaluation; nothing trains or chooses on them): "
                  f"{', '.join(heldout)}. The all-task average is DataComp's headline number.")
    return (f"Zero-shot accuracy (test splits) of students trained on each subset, mean +- std over seeds "
            f"{summary['protocol']['seeds']}; {summary['protocol']['student']['samples_seen']:,} samples seen each."
            + tasks)


def results_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per strategy its label, the option validation chose, and accuracy in points as
    ``mean +- std`` per task (FLYT's, then the held-out ones) and on each average (FLYT's tasks,
    held-out tasks, all tasks)."""
    tasks = [*summary["tasks"], *(summary.get("heldout_tasks") or [])]
    averages = present_averages(summary["results"])
    names = [f"average: {AVERAGES[a]}" for a in averages] if averages != ["average"] else ["average"]
    header = ["strategy", "chosen on validation", *tasks, *names]
    rows = []
    for r in summary["results"].values():
        chosen = r["chosen"]["option"]
        option = "-" if chosen[0] == "all" else " ".join(map(str, chosen))  # kind, then its values
        cells = [f"{100 * r['mean'][t]:.1f} +- {100 * r['std'][t]:.1f}" for t in [*tasks, *averages]]
        rows.append([r["label"], option, *cells])
    return header, rows


def heldout_notes(summary: dict) -> list[str]:
    """For each learned strategy, plainly: does it beat no filtering and CLIP-score filtering on the
    held-out average, by how much, and is that beyond the seed spread."""
    found = summary.get("comparisons", {}).get("average_heldout")
    if not found:
        return ["No held-out tasks in this benchmark: nothing here says whether the gains carry over to "
                "tasks FLYT never saw."]
    labels = {n: r["label"] for n, r in summary["results"].items()}
    notes = []
    for name, refs in found.items():
        first = next(iter(refs.values()))
        parts = []
        for ref, c in refs.items():
            if c["beyond_spread"]:
                how = "beats it beyond the seed spread"
            elif c["beats"]:
                how = "beats it, but within the seed spread"
            else:
                how = "does NOT beat it"
            parts.append(f"vs {labels[ref]} {100 * c['reference_mean']:.1f} +- {100 * c['reference_std']:.1f}: "
                         f"{how} ({100 * c['margin']:+.1f} pts)")
        notes.append(f"Held-out average, {labels[name]}: {100 * first['mean']:.1f} +- {100 * first['std']:.1f}; "
                     + "; ".join(parts) + ".")
    return notes


def results_notes(summary: dict) -> list[str]:
    """The verdict on FLYT's tasks in two sentences, then the held-out comparisons."""
    v = summary["verdict"]
    where = f" on {AVERAGES[v['average']]}" if v.get("average") in ("average_flyt", "average_heldout") else ""
    return [
        f"M-FLYT + SCS {'beats' if v['mflyt_scs_beats_every_single_baseline'] else 'does NOT beat'} every "
        f"single-score baseline{where} (best single: {v['best_single_baseline']}, margin "
        f"{100 * v['mflyt_scs_margin_over_best_single']:+.2f} pts; "
        f"{'larger' if v['margin_exceeds_seed_spread'] else 'not larger'} than the seed spread).",
        f"FLYT {'beats' if v['flyt_beats_clip_score'] else 'does NOT beat'} CLIP-score filtering{where} (margin "
        f"{100 * v['flyt_margin_over_clip_score']:+.2f} pts; "
        f"{'larger' if v['flyt_margin_exceeds_seed_spread'] else 'not larger'} than the seed spread).",
        *heldout_notes(summary),
    ]


def weights_note(summary: dict) -> str:
    """M-FLYT's weights, largest magnitude first."""
    weights = sorted(summary["mflyt_weights"].items(), key=lambda kv: -abs(kv[1]))
    return "M-FLYT weights (on standardised inputs): " + ", ".join(f"{k} {w:+.3f}" for k, w in weights)


def results_markdown(summary: dict) -> str:
    """results.md: the title, the table as a pipe table, the verdict as a list, the weights."""
    header, rows = results_table(summary)
    lines = [f"# {TITLE}", "", results_intro(summary), "", "| " + " | ".join(header) + " |",
             "|---|---|" + "---|" * (len(header) - 2)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", *(f"- {note}" for note in results_notes(summary)), "", weights_note(summary), ""]
    return "\n".join(lines)
