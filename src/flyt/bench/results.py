"""The benchmark's results as data, and their markdown rendering (results.md).

The data is the dict written to results.json:

- ``benchmark``: benchmark.json; ``protocol``: seeds, student and teacher settings, split, grids, steps;
- ``tasks``: task names, in table order;
- ``results``: strategy name -> ``evaluate_selection``'s summary (per_seed, mean, std, seeds, selected,
  unique) plus ``label`` and ``chosen`` (``option`` as ``[kind, value]``, ``val_average``);
- ``validation``: strategy name -> every option tried, ``[{option, val_average}]``;
- ``mflyt_weights``: input column -> M-FLYT weight; ``verdict``: see ``verdict``;
- ``defect_auc``: score column -> defect -> AUC; ``timings_s``: stage -> seconds.

The table and its sentences are built here once (``results_table``, ``results_intro``,
``results_notes``, ``weights_note``) and rendered by ``results_markdown`` and, separately, by
flyt.bench.report's HTML.
"""

from __future__ import annotations

from flyt.bench.strategies import BASELINES

TITLE = "flyt demo: results"


def verdict(results: dict) -> dict:
    """Does M-FLYT + SCS beat every single-score baseline, and FLYT (its better draw) CLIP-score
    filtering, on the average test accuracy; and is each margin larger than the seed spread (the larger
    of the two standard deviations)?"""

    def stat(name):
        r = results[name]
        return r["mean"]["average"], r["std"]["average"]

    singles = [b for b in BASELINES if b in results]
    best_single = max(singles, key=lambda b: stat(b)[0])
    m, ms = stat("mflyt_scs")
    b, bs = stat(best_single)
    f, fs = max(stat("flyt_topk"), stat("flyt_scs"))
    c, cs = stat("clip_score")
    return {
        "best_single_baseline": best_single,
        "mflyt_scs_beats_every_single_baseline": bool(m > b),
        "mflyt_scs_margin_over_best_single": m - b,
        "margin_exceeds_seed_spread": bool(m - b > max(ms, bs)),
        "flyt_beats_clip_score": bool(f > c),
        "flyt_margin_over_clip_score": f - c,
        "flyt_margin_exceeds_seed_spread": bool(f - c > max(fs, cs)),
    }


def results_intro(summary: dict) -> str:
    return (f"Zero-shot accuracy (test splits) of students trained on each subset, mean +- std over seeds "
            f"{summary['protocol']['seeds']}; {summary['protocol']['student']['samples_seen']:,} samples seen each.")


def results_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per strategy its label, the option validation chose, and accuracy in points as
    ``mean +- std`` per task and on average."""
    tasks = summary["tasks"]
    header = ["strategy", "chosen on validation", *tasks, "average"]
    rows = []
    for r in summary["results"].values():
        chosen = r["chosen"]["option"]
        option = "-" if chosen[0] == "all" else f"{chosen[0]} {chosen[1]}"
        cells = [f"{100 * r['mean'][t]:.1f} +- {100 * r['std'][t]:.1f}" for t in [*tasks, "average"]]
        rows.append([r["label"], option, *cells])
    return header, rows


def results_notes(summary: dict) -> list[str]:
    """The verdict in two sentences."""
    v = summary["verdict"]
    return [
        f"M-FLYT + SCS {'beats' if v['mflyt_scs_beats_every_single_baseline'] else 'does NOT beat'} every "
        f"single-score baseline (best single: {v['best_single_baseline']}, margin "
        f"{100 * v['mflyt_scs_margin_over_best_single']:+.2f} pts; "
        f"{'larger' if v['margin_exceeds_seed_spread'] else 'not larger'} than the seed spread).",
        f"FLYT {'beats' if v['flyt_beats_clip_score'] else 'does NOT beat'} CLIP-score filtering (margin "
        f"{100 * v['flyt_margin_over_clip_score']:+.2f} pts; "
        f"{'larger' if v['flyt_margin_exceeds_seed_spread'] else 'not larger'} than the seed spread).",
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
