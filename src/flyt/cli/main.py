"""`flyt <command>`: parse, call the API, print a summary.

Every failure is one line on stderr, ``flyt CMD: error: ...``, and an exit code:
- 2: bad input (a FlytError, a bad option, or a path the user named that is missing, not a directory,
  a directory, or exists where a new one is needed);
- 1: the environment failed (permission denied, read-only filesystem, full disk, out of memory) or
  flyt itself did (any other exception: its type and message, e.g. ``RuntimeError: ...``);
- 130: interrupted.
``FLYT_DEBUG=1`` prints the traceback before the line.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback

from flyt import __version__
from flyt.errors import FlytError

# One module per command under flyt.cli (a dash in the command is an underscore in the module name);
# each defines add_parser(subparsers) that sets `func`.
COMMANDS = ["train", "score", "sample", "reshard", "embed", "demo", "import-scorer"]

# OSErrors about a path the user named (input errors: exit 2); every other OSError is the environment's (exit 1).
BAD_PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is what ``--help`` is for)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="flyt",
        description="Filter Like You Test: learn which image-text pairs to pretrain CLIP on.",
    )
    parser.add_argument("--version", action="version", version=f"flyt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for name in COMMANDS:
        importlib.import_module(f"flyt.cli.{name.replace('-', '_')}").add_parser(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe_os_error(exc: OSError) -> str:
    """``PATH: reason`` (both paths of a failed rename), or the error itself when it names no path."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return f"{type(exc).__name__}: {reason}"
    where = str(exc.filename) if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{where}: {reason}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"flyt {args.command}: interrupted", file=sys.stderr)
        return 130
    except FlytError as exc:
        return _fail(args.command, str(exc), 2)
    except OSError as exc:
        return _fail(args.command, describe_os_error(exc), 2 if exc.errno in BAD_PATH_ERRNOS else 1)
    except MemoryError:
        return _fail(args.command, "out of memory (MemoryError)", 1)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback reaches the user
        return _fail(args.command, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 1)
    return int(result or 0)


def _fail(command: str, message: str, code: int) -> int:
    if os.environ.get("FLYT_DEBUG", "") not in ("", "0"):
        traceback.print_exc()
    print(f"flyt {command}: error: {_one_line(message)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
