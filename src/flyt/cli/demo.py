"""flyt demo [--quick] [--out DIR] [--cache DIR] [--no-progress]"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole method on the built-in offline benchmark and write a report",
        description=(
            "The main job on the built-in offline benchmark: prepare real images and captions (cached), "
            "embed them with two frozen towers, compute baseline scores, train FLYT and M-FLYT on the "
            "tasks' training splits, sample subsets, train and evaluate student CLIPs zero-shot, and "
            "write results.json, results.md and report.html."
        ),
    )
    p.add_argument("--out", default="flyt-demo", help="output directory (default: ./flyt-demo)")
    p.add_argument("--quick", action="store_true", help="fewer training steps and a smaller search (same data)")
    p.add_argument("--cache", default=None, help="asset and embedding cache (default: $FLYT_CACHE or ~/.cache/flyt)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (default: a bar per long stage on a terminal, a line every ~10%% otherwise)")
    p.set_defaults(func=run)


def run(args) -> int:
    from flyt.api.demo import demo

    result = demo(out=args.out, quick=args.quick, cache=args.cache, progress=not args.no_progress)
    print(result.markdown.read_text())
    return 0
