"""Out-of-core sampling: a draw forced to spill (a tiny --max-memory) writes the same bytes as in memory."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from _sample_helpers import small_pool, write_scores
from flyt.api.sample import parse_size
from flyt.cli.main import main
from flyt.errors import FlytError
from flyt.io.uids import UID_DTYPE
from flyt.sampling import ArrayScores, SampleSpec, sample
from flyt.sampling.select import SpilledSelection

N = 4000
METHODS = {
    "scs": ["--method", "scs", "--total", "6000", "--penalty", "0.15", "--seed", "3"],
    "hcs": ["--method", "hcs", "--total", "9000", "--cap", "4", "--seed", "5"],
    "topk": ["--method", "topk", "--fraction", "0.3"],
    "threshold": ["--method", "threshold", "--threshold", "0.25"],
}


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory):
    uids, scores = small_pool(N, seed=7)
    return write_scores(tmp_path_factory.mktemp("ext") / "scores", uids, scores, shards=5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_spilled_and_in_memory_give_identical_files(tmp_path, scores_dir, method):
    files = {}
    for name, extra in [("mem", []), ("ext", ["--max-memory", "2k"])]:
        out = tmp_path / f"{name}.npy"
        rc = main(["sample", "--scores", str(scores_dir), "--column", "clip", "--out", str(out), *METHODS[method],
                   "--workers", "2" if method == "scs" else "1", "--counts-parquet", str(tmp_path / f"{name}.parquet"), *extra])
        assert rc == 0
        summary = json.loads(out.with_suffix(".json").read_text())
        summary.pop("scores")
        files[name] = (out.read_bytes(), summary, pq.read_table(tmp_path / f"{name}.parquet"))
    assert files["ext"][0] == files["mem"][0]
    assert files["ext"][1] == files["mem"][1]
    assert files["ext"][2].equals(files["mem"][2])
    # Nothing but the outputs (and no spill directory) is left beside them.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.{e}" for n in ("mem", "ext") for e in ("npy", "json", "parquet"))


def test_spilled_path_is_taken_and_merges_many_small_blocks(tmp_path):
    rng = np.random.default_rng(2)
    n = 30000
    pairs = rng.integers(0, 2**63, size=2 * n, dtype=np.uint64).view(UID_DTYPE)
    # Planted ties in the high word: the merge must order them by the low word.
    pairs["f0"][: n // 3] = pairs["f0"][n // 3 : 2 * (n // 3)]
    scores = rng.standard_normal(n)
    sources = [ArrayScores(pairs[i : i + 3001], scores[i : i + 3001], f"s{i}") for i in range(0, n, 3001)]
    spec = SampleSpec("scs", total=2 * n, penalty=0.25, seed=1)
    mem = sample(spec, sources)
    ext = sample(spec, sources, max_memory=1, spill_dir=str(tmp_path))
    assert isinstance(ext, SpilledSelection) and not isinstance(mem, SpilledSelection)
    assert np.array_equal(np.asarray(ext.pairs), mem.pairs) and np.array_equal(np.asarray(ext.counts), mem.counts)
    assert ext.total == mem.total == 2 * n
    got = list(ext.chunks(rows=777))
    assert np.array_equal(np.concatenate([p for p, _ in got]), mem.pairs)
    assert np.array_equal(np.concatenate([c for _, c in got]), mem.counts)


def test_spilled_duplicate_check_names_both_rows(tmp_path):
    rng = np.random.default_rng(3)
    pairs = rng.integers(0, 2**63, size=2 * 2000, dtype=np.uint64).view(UID_DTYPE)
    pairs[1500] = pairs[10]
    sources = [ArrayScores(pairs[:1000], rng.standard_normal(1000), "a"), ArrayScores(pairs[1000:], rng.standard_normal(1000), "b")]
    with pytest.raises(FlytError, match="duplicate uid .* \\(a row 10 and b row 500\\)"):
        sample(SampleSpec("scs", total=2000, penalty=0.15), sources, max_memory=1, spill_dir=str(tmp_path))


@pytest.mark.parametrize("text,size", [("2k", 2048), ("8G", 8 << 30), ("1.5M", 3 << 19), ("512MiB", 512 << 20), (4096, 4096)])
def test_max_memory_sizes(text, size):
    assert parse_size(text, "--max-memory") == size


@pytest.mark.parametrize("text", ["lots", "0", "-1G", True])
def test_bad_max_memory_is_one_line(tmp_path, scores_dir, text, capsys):
    with pytest.raises(FlytError, match="--max-memory"):
        parse_size(text, "--max-memory")
    if isinstance(text, str):
        rc = main(["sample", "--scores", str(scores_dir), "--column", "clip", "--out", str(tmp_path / "s.npy"),
                   *METHODS["scs"], f"--max-memory={text}"])
        assert rc == 2 and "--max-memory" in capsys.readouterr().err
        assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("part_rows", [1, 999, 6000, 10**6])
def test_parts_concatenate_to_the_single_file(tmp_path, scores_dir, part_rows):
    from flyt.io.subsets import read_subset

    single = tmp_path / "one.npy"
    parts = tmp_path / "parts"
    assert main(["sample", "--scores", str(scores_dir), "--column", "clip", "--out", str(single), *METHODS["scs"]]) == 0
    assert main(["sample", "--scores", str(scores_dir), "--column", "clip", "--out", str(parts), *METHODS["scs"],
                 "--part-rows", str(part_rows), "--max-memory", "1k"]) == 0
    manifest = json.loads((parts / "manifest.json").read_text())
    files = sorted(p.name for p in parts.iterdir())
    assert files == sorted(["manifest.json"] + [p["file"] for p in manifest["parts"]])
    assert manifest["rows"] == 6000 and all(p["rows"] <= part_rows for p in manifest["parts"])
    assert len(manifest["parts"]) == -(-6000 // part_rows)
    whole = np.load(single)
    joined = np.concatenate([np.load(parts / p["file"]) for p in manifest["parts"]])
    assert joined.tobytes() == whole.tobytes()
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(whole.tobytes()).hexdigest()
    for form in (parts, parts / "manifest.json"):
        assert read_subset(form).tobytes() == whole.tobytes()
    assert json.loads((tmp_path / "parts.json").read_text())["total"] == 6000


def test_parts_out_of_order_or_bad_manifest_is_one_line(tmp_path, scores_dir):
    from flyt.io.subsets import read_subset

    parts = tmp_path / "parts"
    assert main(["sample", "--scores", str(scores_dir), "--column", "clip", "--out", str(parts), *METHODS["scs"],
                 "--part-rows", "2500"]) == 0
    manifest = json.loads((parts / "manifest.json").read_text())
    manifest["parts"] = manifest["parts"][::-1]
    (parts / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FlytError, match="part-00001.npy: subset is not sorted"):
        read_subset(parts)
    manifest["rows"] += 1
    (parts / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FlytError, match="manifest.json: not a flyt-subset-parts manifest"):
        read_subset(parts)


def test_part_rows_needs_a_directory_out(tmp_path, scores_dir, capsys):
    rc = main(["sample", "--scores", str(scores_dir), "--column", "clip", "--out", str(tmp_path / "s.npy"), *METHODS["scs"],
               "--part-rows", "10"])
    assert rc == 2 and "--part-rows needs --out naming a directory" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
