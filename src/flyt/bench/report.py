"""report.html for `flyt demo`: the results table, plots and example pairs, in one self-contained file.

The results are rendered to HTML here, from the results data (flyt.bench.results), not from results.md.
Plots (matplotlib, an optional dependency imported only when a plot is drawn; embedded as PNG):
accuracy bars with seed error bars, M-FLYT weights, score histograms by source and by ground-truth
defect, the SCS count histogram; thumbnails of the highest- and lowest-scored pairs with their captions.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from flyt.bench.results import AVERAGES, present_averages, results_intro, results_notes, results_table, weights_note
from flyt.io.atomic import write_text
from flyt.io.parquet import read_table


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _accuracy_plot(summary) -> str:
    """One panel per average (FLYT's tasks, held-out tasks, all tasks): bars with seed error bars,
    FLYT / M-FLYT in red."""
    import matplotlib.pyplot as plt

    names = list(summary["results"])
    averages = present_averages(summary["results"])
    colors = ["#d62728" if n.startswith(("flyt", "mflyt")) else "#7f7f7f" for n in names]
    fig, axes = plt.subplots(1, len(averages), figsize=(3.6 * len(averages) + 2.5, 0.38 * len(names) + 1),
                             sharey=True, squeeze=False)
    for ax, average in zip(axes[0], averages):
        means = [100 * summary["results"][n]["mean"][average] for n in names]
        stds = [100 * summary["results"][n]["std"][average] for n in names]
        ax.barh(range(len(names)), means, xerr=stds, color=colors, capsize=3)
        ax.set_title(AVERAGES[average] if average != "average" or len(averages) > 1 else "average", fontsize=10)
        ax.set_xlabel("zero-shot accuracy (%)")
        lo = min(m - s for m, s in zip(means, stds))
        ax.set_xlim(max(0, lo - 3), max(m + s for m, s in zip(means, stds)) + 1)
    axes[0][0].set_yticks(range(len(names)), [summary["results"][n]["label"] for n in names])
    axes[0][0].invert_yaxis()
    fig.suptitle("average zero-shot accuracy, mean +- std over student seeds", fontsize=10)
    return _png(fig)


def _weights_plot(weights: dict) -> str:
    import matplotlib.pyplot as plt

    items = sorted(weights.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items], color=["#1f77b4" if v >= 0 else "#ff7f0e" for _, v in items])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("M-FLYT weight on the standardised score")
    return _png(fig)


def _histograms(score: np.ndarray, groups: np.ndarray, title: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = np.linspace(np.nanpercentile(score, 0.5), np.nanpercentile(score, 99.5), 50)
    for g in sorted(set(groups)):
        ax.hist(score[groups == g], bins=bins, histtype="step", density=True, label=f"{g} ({(groups == g).sum()})")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _png(fig)


def _count_histogram(counts: np.ndarray, title: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    values, freq = np.unique(counts, return_counts=True)
    ax.bar(values, freq, color="#2ca02c")
    ax.set_yscale("log")
    ax.set_xlabel("copies of an example in the subset")
    ax.set_ylabel("examples")
    ax.set_title(title)
    return _png(fig)


def _thumbnails(bench_dir: Path, meta, score: np.ndarray, k: int = 12):
    path = bench_dir / "thumbnails.parquet"
    if not path.is_file() or "image_sha1" not in meta.column_names:
        return [], []
    thumbs = read_table(path, ["image_sha1", "image"])
    by_sha = dict(zip(thumbs.column("image_sha1").to_pylist(), thumbs.column("image").to_pylist()))
    sha = meta.column("image_sha1").to_pylist()
    text = meta.column("text").to_pylist()
    order = np.argsort(score)

    def cards(rows):
        out = []
        for r in rows:
            img = by_sha.get(sha[r])
            src = "data:image/png;base64," + base64.b64encode(img).decode() if img else ""
            out.append((src, text[r], float(score[r])))
        return out

    return cards(order[::-1][:k]), cards(order[:k])


def _dedup_groups(bench_dir: Path, meta, scores: dict, k: int = 8, members: int = 4):
    """Up to ``k`` dedup groups whose members come from more than one source (else any groups of two or
    more rows), largest first: [(sources, [(thumbnail, caption + source, nearest cosine), ...])]."""
    if "dedup_group" not in scores or "source" not in meta.column_names:
        return []
    path = bench_dir / "thumbnails.parquet"
    by_sha = {}
    if path.is_file() and "image_sha1" in meta.column_names:
        thumbs = read_table(path, ["image_sha1", "image"])
        by_sha = dict(zip(thumbs.column("image_sha1").to_pylist(), thumbs.column("image").to_pylist()))
    sha = meta.column("image_sha1").to_pylist() if "image_sha1" in meta.column_names else [None] * meta.num_rows
    text, source = meta.column("text").to_pylist(), np.asarray(meta.column("source").to_pylist())
    # ids read back as float64 (flyt.io.scores): two groups merge only if their ids agree in the top 53 bits
    group, size = scores["dedup_group"], scores["dedup_group_size"]
    rows = np.flatnonzero(size > 1)
    order = rows[np.lexsort((rows, group[rows]))]
    _, starts = np.unique(group[order], return_index=True)
    found = [order[a:b] for a, b in zip(starts, [*starts[1:], len(order)])]
    mixed = [g for g in found if len(set(source[g].tolist())) > 1]
    chosen = sorted(mixed or found, key=lambda g: (-len(g), int(g[0])))[:k]
    out = []
    for g in chosen:
        cards = []
        for r in g[:members]:
            img = by_sha.get(sha[r])
            src = "data:image/png;base64," + base64.b64encode(img).decode() if img else ""
            cards.append((src, f"[{source[r]}] {text[r]}", float(scores["dedup_nearest"][r])))
        out.append((sorted(set(source[g].tolist())), len(g), cards))
    return out


def _dedup_section(summary: dict, groups) -> str:
    d = summary.get("dedup") or {}
    if not d and not groups:
        return ""
    auc = (summary.get("defect_auc") or {}).get("dedup_distance", {}).get("duplicate")
    parts = [f"dedup (SemDeDup on the pool's image embeddings, cosine >= threshold, groups = connected "
             f"components): {d.get('rows_in_groups', 0)} rows in {d.get('groups', 0)} groups of two or more."]
    if auc is not None:
        parts.append(f"As a detector of the injected exact copies (score dedup_distance = 1 - cosine to the "
                     f"nearest other row), AUC {auc:.3f}")
        if "duplicate_auc_ceiling" in d:
            parts.append(f"(ceiling {d['duplicate_auc_ceiling']:.3f}: a copy is identical to its original, "
                         "which keeps its own label).")
    c = d.get("copy_detection") or {}
    if "auc" in c:
        parts.append(f"As a detector of the rows that have an exact copy in the pool ({c['rows_with_copy']:,} rows whose "
                     "image bytes occur in another row too: the injected copies, their originals and the sources' own "
                     f"repeats), AUC {c['auc']:.4f}; dedup groups {100 * c.get('recall', 0):.1f}% of them, and "
                     f"{100 * c.get('grouped_exact', 0):.1f}% of the rows it groups have an exact copy (the rest are "
                     "near duplicates).")
    return "<h2>Near-duplicate groups</h2><p>" + html.escape(" ".join(parts)) + "</p>"


def results_html(summary: dict) -> str:
    """The results (flyt.bench.results' table and sentences) as HTML: the intro, the table, the verdict
    and the weights, each a paragraph but the table. (The page has its own title.)"""
    header, rows = results_table(summary)
    # Per task and three averages make a wide table: it scrolls inside its box, not the page.
    table = ("<div class='wide'><table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header)
             + "</tr></thead><tbody>"
             + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
             + "</tbody></table></div>")
    notes = [*results_notes(summary), weights_note(summary)]
    return f"<p>{html.escape(results_intro(summary))}</p>" + table + "".join(f"<p>{html.escape(n)}</p>" for n in notes)


def _defect_table(auc: dict) -> str:
    """Per score, P(a clean pair scores above a pair with each defect): the scores as defect detectors."""
    defects = sorted({d for row in auc.values() for d in row})
    if not defects:
        return ""
    head = "".join(f"<th>{html.escape(d)}</th>" for d in defects)
    body = "".join(
        f"<tr><td>{html.escape(c)}</td>"
        + "".join(f"<td>{row[d]:.2f}</td>" if d in row else "<td></td>" for d in defects)
        + "</tr>"
        for c, row in auc.items()
    )
    return ("<h2>Which defects each score detects</h2><p>P(a clean pair scores above a pair with the defect), "
            "from the ground-truth <code>defect</code> column no scorer reads: 0.5 = blind to it, below 0.5 = "
            "prefers it.</p>"
            f"<table class='auc'><thead><tr><th>score</th>{head}</tr></thead><tbody>{body}</tbody></table>")


def write_report(summary: dict, scores: dict, meta, bench_dir: Path, subsets_dir: Path, out: Path) -> None:
    """report.html from the results data (``summary``, as in results.json), the score columns aligned to
    the pool (``scores``), the pool's metadata table and the drawn subsets."""
    sources = np.asarray(meta.column("source").to_pylist()) if "source" in meta.column_names else None
    defects = np.asarray(meta.column("defect").to_pylist()) if "defect" in meta.column_names else None
    figs = [("Average accuracy by strategy", _accuracy_plot(summary)),
            ("M-FLYT weights", _weights_plot(summary["mflyt_weights"]))]
    for column in ("mflyt", "flyt", "clip_score"):
        if column in scores:
            if sources is not None:
                figs.append((f"{column} by source", _histograms(scores[column], sources, f"{column} by source")))
            if defects is not None:
                title = f"{column} by ground-truth defect"
                figs.append((f"{column} by defect", _histograms(scores[column], defects, title)))
    scs = subsets_dir / "mflyt_scs.npy"
    if scs.is_file():
        subset = np.load(scs)
        _, counts = np.unique(subset, return_counts=True)
        figs.append(("SCS counts", _count_histogram(counts, "M-FLYT + SCS: copies per selected example")))
    top, bottom = _thumbnails(bench_dir, meta, scores.get("mflyt", scores.get("flyt")))
    dups = _dedup_groups(bench_dir, meta, scores)

    def gallery(cards):
        return "".join(
            f'<figure><img src="{src}" alt=""><figcaption>{html.escape(caption)}<br><b>{s:+.3f}</b>'
            "</figcaption></figure>"
            for src, caption, s in cards
        )

    body = [
        "<h1>flyt demo report</h1>",
        results_html(summary),
        *(f"<h2>{html.escape(t)}</h2><img class='plot' src='{src}' alt='{html.escape(t)}'>" for t, src in figs),
        _defect_table(summary.get("defect_auc") or {}),
        "<h2>Highest M-FLYT scores</h2><div class='gallery'>" + gallery(top) + "</div>",
        "<h2>Lowest M-FLYT scores</h2><div class='gallery'>" + gallery(bottom) + "</div>",
        _dedup_section(summary, dups),
        *(f"<h3>{n} rows from {html.escape(', '.join(srcs))}</h3><div class='gallery'>{gallery(cards)}</div>"
          for srcs, n, cards in dups),
    ]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flyt demo report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border: 1px solid #ddd; padding: 3px 6px; text-align: right; white-space: nowrap; }}
th:first-child, td:first-child {{ text-align: left; }}
thead th {{ background: #f0f0f0; white-space: normal; }}
.wide {{ overflow-x: auto; max-width: 100%; }}
img.plot {{ max-width: 100%; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 8px; }}
figure {{ width: 120px; margin: 0; font-size: 11px; }}
figure img {{ width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #ddd; }}
</style></head><body>
{''.join(body)}
</body></html>
"""
    write_text(page, out)
