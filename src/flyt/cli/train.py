"""flyt train CONFIG.yaml [--set key=value ...] [--resume]"""

from __future__ import annotations

import sys

from flyt.training.config import config_keys, load_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a FLYT or M-FLYT scorer from downstream training sets",
        description=(
            "Train a FLYT scorer (mode: flyt, SwiGLU head over frozen image/text embeddings) or an "
            "M-FLYT mixer (mode: mflyt, linear over standardised score columns) by differentiating the "
            "downstream loss through one optimizer step of a reference CLIP model. Writes a run "
            "directory: config.yaml, metrics.jsonl, checkpoints/, scorer.pt. The pool (flyt shards or a DataComp "
            "metadata directory; 'pair' picks b32 or l14) is held in memory when its float32 embeddings take "
            "< 2 GiB, else streamed (pool_buffer: auto | ROWS): rows drawn with replacement in blocks of "
            "pool_block rows through a shuffle buffer of pool_buffer x (d_img + d_txt) x 4 bytes "
            "(l14: 6 KiB a row, b32: 4 KiB) plus one block."
        ),
        epilog="config keys: " + _keys_help(),
    )
    p.add_argument("config", nargs="?",
                   help="YAML training config (keys below); optional if --set gives pool and tasks")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key (dotted for nested keys, e.g. reference.init=random); repeatable",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in 'out' from checkpoints/latest.pt "
                   "(with the run's config: only 'steps' may change)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from flyt.api.train import train

    cfg = load_config(args.config, args.overrides)
    try:
        result = train(cfg, resume=args.resume, progress=False if args.no_progress else None)
    except OSError as exc:  # the environment, not the input (a full disk, a lost mount): one line, exit 1
        print(f"flyt train: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    print(result.line())
    return 0


def describe_os_error(exc: OSError) -> str:
    """'PATH: No space left on device' (one line, whatever the OSError carries)."""
    reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _keys_help() -> str:
    """'mode, name, ..., reference.{kind,embed_dim,...}, ...': TrainConfig's keys, nested ones grouped."""
    groups: dict[str, list[str]] = {}
    for key in config_keys():
        head, _, tail = key.partition(".")
        groups.setdefault(head, []).append(tail)
    return ", ".join(f"{head}.{{{','.join(tails)}}}" if tails[0] else head for head, tails in groups.items())
