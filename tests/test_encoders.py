"""Encoders layer with a fake encoder: content cache, pool/task embedding, `flyt embed` CLI."""

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _encoders_helpers import FakeEncoder, png
from flyt.cli.main import main
from flyt.encoders import get_encoder
from flyt.encoders.cache import CachedEncoder
from flyt.encoders.embed import embed_pairs, embed_task
from flyt.errors import FlytError
from flyt.io.images import decode_image
from flyt.io.inputs import read_pairs, read_task_input
from flyt.io.pool import load_pool
from flyt.io.tasks import load_task
from flyt.io.uids import content_uid


def test_cache_encodes_each_content_once_and_persists(tmp_path):
    enc = FakeEncoder()
    cached = CachedEncoder(enc, tmp_path)
    imgs = [png("red"), png("blue"), png("red")]
    a = cached.images(imgs)
    assert enc.image_calls == 2  # identical bytes encoded once
    np.testing.assert_allclose(a[0], a[2])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    t = cached.texts(["a cat", "a dog", "a cat"])
    assert enc.text_calls == 2
    # A fresh wrapper reads the parts written on disk: nothing is encoded again.
    enc2 = FakeEncoder()
    again = CachedEncoder(enc2, tmp_path)
    np.testing.assert_allclose(again.images(imgs), a)
    np.testing.assert_allclose(again.texts(["a cat", "a dog", "a cat"]), t)
    assert enc2.image_calls == 0 and enc2.text_calls == 0
    assert again.images([png("green")]).shape == (1, 8) and enc2.image_calls == 1


def test_cached_equals_direct_encoding(tmp_path):
    enc = FakeEncoder()
    imgs = [png((i * 40, 255 - i * 30, 7)) for i in range(5)]
    direct = enc.encode_images([decode_image(b) for b in imgs])
    np.testing.assert_allclose(CachedEncoder(FakeEncoder(), tmp_path).images(imgs), direct, atol=1e-6)


def test_decode_flattens_transparency_on_white():
    img = decode_image(png((0, 0, 0, 0), mode="RGBA"))
    assert img.mode == "RGB" and img.getpixel((3, 3)) == (255, 255, 255)
    with pytest.raises(FlytError, match="row 3: unreadable image"):
        decode_image(b"not an image", "pairs.parquet: row 3")


def _pairs_file(tmp_path, n=7):
    table = pa.table({
        "text": [f"thing {i}" for i in range(n)],
        "image": [png((30 * i, 10, 200 - 20 * i)) for i in range(n)],
        "source": ["a"] * n,
    })
    pq.write_table(table, tmp_path / "pairs.parquet")
    return tmp_path / "pairs.parquet"


def test_embed_pairs_writes_a_valid_pool(tmp_path):
    table, images = read_pairs(_pairs_file(tmp_path))
    enc = CachedEncoder(FakeEncoder())
    assert embed_pairs(table, images, enc, tmp_path / "pool", shard_rows=3) == 7
    assert len(list((tmp_path / "pool").glob("part-*.parquet"))) == 3
    pool = load_pool(tmp_path / "pool")
    assert len(pool) == 7 and pool.image.shape == (7, 8) and pool.text.shape == (7, 6)
    shard = pq.read_table(tmp_path / "pool" / "part-00000.parquet")
    assert "image" not in shard.column_names and shard.column("source").to_pylist() == ["a"] * 3
    assert pa.types.is_fixed_size_list(shard.schema.field("image_embedding").type)
    # uids come from content: same input, same uids.
    table2, images2 = read_pairs(tmp_path / "pairs.parquet")
    embed_pairs(table2, images2, enc, tmp_path / "pool2")
    assert sorted(load_pool(tmp_path / "pool2").uids) == sorted(pool.uids)


def test_embed_pairs_rejects_duplicate_content(tmp_path):
    table = pa.table({"text": ["x", "x"], "image": [png("red"), png("red")]})
    with pytest.raises(FlytError, match="duplicate uid"):
        embed_pairs(table, table.column("image").to_pylist(), CachedEncoder(FakeEncoder()), tmp_path / "p")
    assert not (tmp_path / "p").exists() or not list((tmp_path / "p").glob("*.parquet"))


def test_read_pairs_from_image_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    for c in ["red", "blue"]:
        (tmp_path / "imgs" / f"{c}.png").write_bytes(png(c))
        (tmp_path / "imgs" / f"{c}.txt").write_text(f"a {c} square\nsecond line")
    table, images = read_pairs(tmp_path / "imgs")
    assert sorted(table.column("text").to_pylist()) == ["a blue square", "a red square"]
    (tmp_path / "imgs" / "green.png").write_bytes(png("green"))
    with pytest.raises(FlytError, match="green.png: no caption file"):
        read_pairs(tmp_path / "imgs")


def test_task_roundtrip_through_io_tasks(tmp_path):
    enc = CachedEncoder(FakeEncoder())
    splits = {"train": ([png("red"), png("blue"), png("red", 20)], [0, 1, 0]), "test": ([png("blue", 12)], [1])}
    embed_task(tmp_path / "t", ["red thing", "blue thing"], ["a {c}.", "the {c}"], splits, enc)
    task = load_task(tmp_path / "t")
    assert task.classnames == ["red thing", "blue thing"] and task.prompts.shape == (2, 2, 6)
    assert task.train.labels.tolist() == [0, 1, 0] and task.test.images.shape == (1, 8)
    direct = FakeEncoder().encode_texts(["the blue thing"])[0]
    np.testing.assert_allclose(task.prompts[1, 1], direct, atol=1e-6)
    with pytest.raises(FlytError, match="out of range"):
        embed_task(tmp_path / "u", ["a"], ["{c}"], {"train": ([png("red")], [3])}, enc)
    with pytest.raises(FlytError, match="has no '\\{c\\}'"):
        embed_task(tmp_path / "u", ["a"], ["no slot"], {"train": ([png("red")], [0])}, enc)


def test_encoder_names(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if the extra were not installed
    with pytest.raises(FlytError, match=r"pip install 'flyt-clip\[openclip\]'"):
        get_encoder("openclip:ViT-B-32")
    with pytest.raises(FlytError, match="unknown encoder"):
        get_encoder("nope")
    assert content_uid("a", "b") != content_uid("ab", "") and len(content_uid("x")) == 32


def test_cli_embed_errors_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if the extra were not installed
    assert main(["embed", "pool", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    pq.write_table(pa.table({"caption": ["x"]}), tmp_path / "bad.parquet")
    assert main(["embed", "pool", "--input", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "needs a column 'image'" in err and err.count("\n") == 1
    assert main(["embed", "pool", "--input", str(_pairs_file(tmp_path)), "--out", str(tmp_path / "o"),
                 "--encoder", "openclip:ViT-B-32"]) == 2
    assert "open_clip" in capsys.readouterr().err
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "classnames.txt").write_text("a\nb\n")
    assert main(["embed", "task", "--input", str(tmp_path / "task"), "--out", str(tmp_path / "t")]) == 2
    assert "zeroshot_classification_templates.txt: missing file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()


def test_read_task_input(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "classnames.txt").write_text("cat\ndog\n")
    (d / "zeroshot_classification_templates.txt").write_text("a {c}\n")
    pq.write_table(pa.table({"image": [png("red")], "label": [1]}), d / "train.parquet")
    names, templates, splits = read_task_input(d)
    assert names == ["cat", "dog"] and templates == ["a {c}"] and list(splits) == ["train"]


def test_interrupted_embedding_leaves_previous_output(tmp_path):
    table, images = read_pairs(_pairs_file(tmp_path))
    embed_pairs(table, images, CachedEncoder(FakeEncoder()), tmp_path / "pool", shard_rows=3)
    before = sorted(p.name for p in (tmp_path / "pool").iterdir())

    class Failing(FakeEncoder):
        def encode_images(self, imgs):
            if self.image_calls:
                raise RuntimeError("interrupted")
            return super().encode_images(imgs)

    table2 = table.set_column(0, "text", pa.array([f"other {i}" for i in range(7)]))
    with pytest.raises(RuntimeError):
        embed_pairs(table2, [png((i, 1, 2)) for i in range(7)], CachedEncoder(Failing()), tmp_path / "pool", shard_rows=3)
    assert sorted(p.name for p in (tmp_path / "pool").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert "thing 0" in pq.read_table(tmp_path / "pool").column("text").to_pylist()
