"""`flyt <command>`: parse, call the API, print a summary. Bad input -> one line, exit 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from flyt import __version__
from flyt.errors import FlytError

# One module per command under flyt.cli; each defines add_parser(subparsers) that sets `func`.
COMMANDS = ["train", "score", "sample", "embed", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flyt",
        description="Filter Like You Test: learn which image-text pairs to pretrain CLIP on.",
    )
    parser.add_argument("--version", action="version", version=f"flyt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"flyt.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"flyt.cli.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except FlytError as exc:
        print(f"flyt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flyt {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
