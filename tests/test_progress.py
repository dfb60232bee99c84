"""Progress you can see (issue 12, item 4): flyt.progress on its own, and `flyt demo`'s stages with it.

- not a terminal: one plain line per tenth crossed (~10 lines for 100 steps), with rate and ETA;
- a terminal (a pseudo-terminal here: a subprocess with stderr on its slave end): a tqdm bar;
- disabled: nothing;
- the tiny demo under a pseudo-terminal opens with its plan and draws each stage's bar; a finished run's
  plan says its stages are cached; the same demo without a terminal prints periodic lines.
"""

import fcntl
import io
import os
import re
import struct
import subprocess
import sys
import termios
from dataclasses import replace
from pathlib import Path

import pytest

from flyt.progress import Progress

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
LINE = re.compile(r"^(?P<desc>.+?): +(?P<pct>\d+)% (?P<n>[\d,.kM]+)/(?P<total>[\d,.kM]+) \w+, [\d,.kM]+ \w+/s, "
                  r"(ETA \S+|done in \S+)")


def _lines(total, steps, **kw):
    out = io.StringIO()
    with Progress(total, "work", unit="step", stream=out, **kw) as bar:
        for n in steps:
            bar.update(n)
    return out.getvalue().splitlines()


def test_not_a_terminal_prints_a_line_per_tenth_with_rate_and_eta():
    lines = _lines(100, [1] * 100)
    assert len(lines) == 10
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m["pct"]) for m in parsed] == list(range(10, 101, 10))
    assert all("ETA" in line for line in lines[:-1]) and "done in" in lines[-1]
    # big steps: at most one line per update, whatever it crosses
    assert [int(LINE.match(x)["pct"]) for x in _lines(100, [35, 35, 30])] == [35, 70, 100]
    # a resumed count (initial) prints only the tenths still to cross
    assert len(_lines(100, [1] * 50, initial=50)) == 5


def test_disabled_or_auto_off_a_terminal_prints_nothing():
    assert _lines(100, [1] * 100, show=False) == []
    assert _lines(100, [1] * 100, show=None) == []  # None: a bar on a terminal only
    assert _lines(0, [], show=True) == []  # nothing to do: nothing shown


def test_lines_carry_the_postfix_and_messages_pass_through():
    out = io.StringIO()
    bar = Progress(4, "train", unit="step", stream=out)
    for step in bar.iterate(range(4)):
        bar.set_postfix(loss=f"{1 / (step + 1):.2f}")
    bar.write("a message")
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1] == "a message"
    assert lines[-2].startswith("train: 100% 4/4 steps") and lines[-2].endswith("(loss=0.25)")


def _on_a_terminal(argv, size=(40, 110), timeout=120) -> str:
    """Run ``argv`` with stdin, stdout and stderr on a new pseudo-terminal (rows x columns ``size``,
    or none reported); returns everything it wrote there."""
    master, slave = os.openpty()
    if size:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: every process holding the slave has exited
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout) == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


BAR_SCRIPT = """
from flyt.progress import Progress, quiet
for show in (True, None):
    with Progress(50, f"ptybar-{show}", unit="step", show=show) as bar:
        for _ in range(50):
            bar.update(1)
with quiet():  # a library's default bar (show=None) is silenced; an explicit one is not
    for show in (None, True):
        for _ in Progress(3, f"quiet-{show}", show=show).iterate(range(3)):
            pass
"""


@pytest.mark.parametrize("size", [(40, 110), None], ids=["sized", "no-size-reported"])
def test_a_terminal_gets_a_tqdm_bar(size):
    text = _on_a_terminal([sys.executable, "-c", BAR_SCRIPT], size)
    for show in (True, None):
        final = re.search(rf"ptybar-{show}: 100%\|█+\| 50/50 \[[\d:]+<[\d:]+, +[\d.]+step/s\]", text)
        assert final, text  # the bar, its count, elapsed<ETA and rate
    assert "\r" in text.replace("\r\n", "") and "ETA" not in text  # drawn in place, not as lines
    assert "quiet-True: 100%" in text and "quiet-None" not in text


# ---------------------------------------------------------------- the demo

STAGES = ["assets", "embedding", "teacher", "baseline scores", "dedup + contamination", "FLYT", "M-FLYT",
          "students: validation", "students: test", "report"]
BARS = ["assets: render", "embed: pool", "embed: tasks", "teacher", "score: baselines", "score: dedup, contamination",
        "flyt", "score: flyt",
        "mflyt", "score: mflyt", "students: validation", "students: test"]


@pytest.fixture(scope="module")
def terminal_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress_demo")
    return root, _on_a_terminal([sys.executable, str(TESTS / "_progress_demo_main.py"), str(root)], timeout=300)


def test_demo_on_a_terminal_opens_with_its_plan_and_draws_each_stage(terminal_run):
    _, text = terminal_run
    plan = text[: text.index("\r\x1b") if "\r\x1b" in text else text.index("|")]  # before the first bar
    assert re.search(r"plan: \d+ stages, ~\S+ of work not cached", plan), plan
    for i, stage in enumerate(STAGES, 1):
        assert re.search(rf"{i}\. {re.escape(stage)} +(~\S+|cached) ", plan), (stage, plan)
    assert "cached" not in plan.split("not cached", 1)[1]  # a first run: nothing cached yet
    for desc in BARS:
        assert re.search(rf"(^|\r|\n){re.escape(desc)}: 100%\|█+\| .*/s[,\]]", text), (desc, text[-4000:])
    assert "wrote" in text and "report.html" in text
    assert "sample: " not in text  # the subset draws' own bars are kept quiet


def test_a_finished_runs_plan_says_its_stages_are_cached(terminal_run, monkeypatch):
    import flyt.encoders
    from _demo_helpers import tiny_config
    from _encoders_helpers import FakeEncoder
    from flyt.pipeline.demo import _task_dirs, scorer_config
    from flyt.pipeline.demo_plan import demo_plan, plan_lines

    root, _ = terminal_run
    monkeypatch.setattr(flyt.encoders, "get_encoder", lambda name="offline", **kw: FakeEncoder())
    cfg = replace(tiny_config(root / "out", None), cache=str(root / "cache"))
    stages = demo_plan(cfg, scorer_config, _task_dirs)
    assert {s.name: s.cached for s in stages} == {
        "assets + embedding": True, "teacher": True, "baseline scores": True, "dedup + contamination": True,
        "FLYT": True, "M-FLYT": True,
        "students: validation": True, "students: test": True, "report": False}
    # other training settings: the scorers are not the cached ones
    changed = {s.name: s.cached for s in demo_plan(replace(cfg, flyt_steps=13), scorer_config, _task_dirs)}
    assert changed["teacher"] and changed["baseline scores"] and not changed["FLYT"] and not changed["M-FLYT"]
    # another pipeline seed: its own teacher and baselines (not this run's); dedup reads the benchmark's pool
    seeded = {s.name: s.cached for s in demo_plan(replace(cfg, pipeline_seed=1), scorer_config, _task_dirs)}
    assert not seeded["teacher"] and not seeded["baseline scores"] and seeded["dedup + contamination"], seeded
    assert "cached" in plan_lines(stages)[2]


def test_demo_without_a_terminal_prints_periodic_lines(terminal_run, tmp_path, capfd):
    from _demo_helpers import tiny_config
    from flyt.pipeline.demo import run_demo

    root, _ = terminal_run
    bench = root / "cache" / "bench" / "fake-test-encoder"
    lines = []
    run_demo(tiny_config(tmp_path / "out", bench), printer=lines.append)
    err = capfd.readouterr().err
    assert lines[0].split("] ", 1)[1].startswith("plan: ") and "assets + embedding" in lines[1]
    assert "\r" not in err and "█" not in err
    progress = [m for m in map(LINE.match, err.splitlines()) if m]
    for desc in BARS[3:]:  # the benchmark is given: its stages do not run
        pcts = [int(m["pct"]) for m in progress if m["desc"] == desc]
        assert pcts and pcts[-1] == 100 and len(pcts) <= 11 and pcts == sorted(pcts), (desc, pcts)
    assert sum(len([m for m in progress if m["desc"] == d]) for d in BARS[3:]) >= 40  # ~10% steps, not one line


def test_flyt_demo_no_progress_reaches_the_demo(monkeypatch, tmp_path):
    import flyt.api.demo
    from flyt.cli.main import main

    seen = {}

    class Result:
        markdown = tmp_path / "results.md"

    Result.markdown.write_text("table")

    def fake_demo(**fields):
        seen.update(fields)
        return Result()

    monkeypatch.setattr(flyt.api.demo, "demo", fake_demo)
    assert main(["demo", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert seen["progress"] is False
    assert main(["demo", "--out", str(tmp_path / "o")]) == 0
    assert seen["progress"] is True
