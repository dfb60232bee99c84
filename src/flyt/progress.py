"""Progress of a long stage: a bar on a terminal, a plain line every ~10% elsewhere, or nothing.

One object for every long loop of flyt (asset rendering, embedding, training, scoring, students)::

    with Progress(total, "teacher", unit="sample", show=True) as bar:
        for ...:
            bar.update(n)

``show`` picks the mode once, at construction, from ``stream`` (default ``sys.stderr``):

- ``False``: nothing at all.
- ``None``: a tqdm bar when the stream is a terminal, nothing otherwise (what ``flyt train`` / ``flyt
  score`` / ``flyt embed`` always did: their stderr stays one line on an error when redirected); nothing
  at all inside ``with quiet():``.
- ``True``: a tqdm bar (rate and ETA) on a terminal; otherwise one line each time the count crosses
  another tenth of ``total`` (at most one line per ``update``, so ~10 lines whatever the step size),
  each with the count, the rate since the start and the ETA = left / rate. Lines are flushed at once,
  so a log file shows where a run stands while it runs.

The rate counts only what this object advanced (``initial``, e.g. the steps before a resume, is not
work done now), so the ETA of a resumed run is right from its first line. A total of 0 (everything
cached) shows nothing. Text printed while a bar may be on screen goes through ``printing()``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _columns(stream) -> int:
    """The terminal's width, 0 if it reports no size."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return 0
    return size.columns if size.lines > 0 else 0


_quiet = [0]  # depth of quiet() blocks


@contextlib.contextmanager
def quiet():
    """Inside: ``show=None`` (a library's default: a bar on a terminal only) shows nothing. For the short
    inner loops of a stage that shows its own progress (the demo's subset draws)."""
    _quiet[0] += 1
    try:
        yield
    finally:
        _quiet[0] -= 1


def mode(show: bool | None, stream=None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for ``show`` on ``stream`` (see the module doc)."""
    if show is False or (show is None and _quiet[0]):
        return "off"
    if is_terminal(stream if stream is not None else sys.stderr):
        return "bar"
    return "lines" if show else "off"


def duration(seconds: float) -> str:
    """A short human duration: 45s, 3m05s, 1h02m."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def count(n: float) -> str:
    """1234 -> 1,234; 1.2e6 -> 1.2M (counts in lines; the bar formats its own)."""
    n = float(n)
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f}M"
    if abs(n) >= 1e4:
        return f"{n / 1e3:.0f}k"
    return f"{n:,.0f}" if n == int(n) else f"{n:,.1f}"


class Progress:
    """A progress display over ``total`` units; see the module doc for ``show``."""

    def __init__(self, total: float, desc: str, unit: str = "it", show: bool | None = True, stream=None,
                 initial: float = 0, scale: bool = False):
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode(show, self.stream) if total > 0 else "off"  # nothing to do: nothing to show
        self.total, self.desc, self.unit = float(total), desc, unit
        self.n = self.start = float(initial)
        self.t0 = time.perf_counter()
        self.postfix = ""
        self._tenth = self._tenths(self.n)  # the last tenth a line was printed for
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            # a terminal that reports no size (a bare pseudo-terminal) would get no bar at all
            width = {"dynamic_ncols": True} if _columns(self.stream) else {"ncols": 80, "nrows": 24}
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=scale, file=self.stream,
                             leave=True, **width)

    def _tenths(self, n: float) -> int:
        return int(10 * n // self.total) if self.total > 0 else 0

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and self._tenths(self.n) > self._tenth:
            self._tenth = self._tenths(self.n)
            self._line()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.t0
        rate = (self.n - self.start) / elapsed if elapsed > 0 else 0.0
        units = f"{self.unit}s" if not self.unit.endswith("s") else self.unit
        pct = min(100, int(100 * self.n / self.total)) if self.total > 0 else 100
        text = f"{self.desc}: {pct:3d}% {count(self.n)}/{count(self.total)} {units}, {count(rate)} {units}/s"
        if self.n >= self.total:
            text += f", done in {duration(elapsed)}"
        else:
            text += f", ETA {duration((self.total - self.n) / rate) if rate > 0 else '?'}"
        if self.postfix:
            text += f" ({self.postfix})"
        print(text, file=self.stream, flush=True)

    def set_postfix(self, **values) -> None:
        """Latest values shown beside the bar, or at the end of the next line."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def write(self, message: str, file=None) -> None:
        """Print ``message`` (to ``file``, default the progress stream) without breaking a bar."""
        if self._bar is not None:
            self._bar.write(message, file=file or self.stream)
        else:
            print(message, file=file or self.stream, flush=True)

    def iterate(self, items: Iterable) -> Iterator:
        """Yield ``items``, counting one unit after each has been processed; close at the end."""
        try:
            for item in items:
                yield item
                self.update(1)
        finally:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def printing():
    """Around a print to stdout or stderr while a bar may be on screen: the bar is cleared first and
    drawn again after, instead of the text landing in the middle of it."""
    from tqdm import tqdm

    with tqdm.external_write_mode():
        yield
