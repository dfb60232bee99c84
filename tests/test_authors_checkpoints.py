"""The authors' released FLYT / M-FLYT scoring models (issue 17): import, score a DataComp pool, compare.

The checkpoints are built here in the authors' layout, transcribed (not copied) from
the authors' repository formll/FLYT, flyt/factory.py (commit 50035b3):

- FLYT, ``ScoringModel``: the state dict holds the CLIP base under ``clip_model.*`` (registered first)
  and the head under ``glu_model.layers.<i>.{w1,w2,w3}.{weight,bias}`` (per layer in the order w1, w2,
  w3, weight before bias). With d = 2 x the base's embedding width (1024 for ViT-B-32) and hidden h:
  w1, w3: (h, d) + (h,); w2: (d, h) + (d,) for every layer but the last, whose w2 is (1, h) + (1,).
  Forward: x = [normalise(image) ; normalise(text)] (image first; open_clip's CLIP.forward normalises),
  then for each layer x <- w2(silu(w1 x) * w3 x) (biases included; no residual, nothing in between),
  and the score is the last layer's single output.
- M-FLYT, ``MixingModel``: ``layers.0.weight`` (1, K), ``layers.0.bias`` (1,); score = w . s + b over
  the K raw input scores in the training run's field order (flyt/data.py: no standardisation).
- Files: a bare state dict (the released flyt.pt / mflyt.pt) or a training checkpoint with the state
  dict under "state_dict" (and epoch, name, optimizer beside it).

The oracle below is an independent float64 numpy forward pass of those equations over the npz
embeddings read with numpy; flyt scores in float32. Tolerance: |flyt - oracle| <= 1e-5 x max|oracle|
+ 1e-7 (float32 rounding over 1024-wide dot products; measured at 0.02-0.09 of it, while swapping
image and text, or dropping one bias, misses it by 4,000-50,000 times).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tests._score_helpers import make_datacomp_pool

import flyt
from flyt.cli.main import main
from flyt.io.scores import write_score_shard

EMBED = 512  # b32
D = 2 * EMBED


def _uniform(g, shape, fan_in, gain):
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).float() * (gain / fan_in ** 0.5)


def authors_flyt_state(layers: int, hidden: int, seed: int = 0, gain: float = 3.0) -> dict[str, torch.Tensor]:
    """A ScoringModel state dict in the authors' key order and shapes, random weights.

    ``gain`` > 1 keeps the scores varied through a chain of layers (nn.Linear's own init, gain 1,
    shrinks them towards a constant after a few layers, which would make the comparison weak)."""
    g = torch.Generator().manual_seed(seed)
    sd = {  # a few of open_clip ViT-B-32's keys, real shapes: the base is dropped on import
        "clip_model.positional_embedding": torch.randn(77, 512, generator=g),
        "clip_model.text_projection": torch.randn(512, 512, generator=g),
        "clip_model.logit_scale": torch.tensor(4.6052),
        "clip_model.visual.class_embedding": torch.randn(768, generator=g),
        "clip_model.visual.proj": torch.randn(768, EMBED, generator=g),
    }
    for i in range(layers):
        out = D if i < layers - 1 else 1
        for w, (rows, cols) in (("w1", (hidden, D)), ("w2", (out, hidden)), ("w3", (hidden, D))):
            sd[f"glu_model.layers.{i}.{w}.weight"] = _uniform(g, (rows, cols), cols, gain)
            sd[f"glu_model.layers.{i}.{w}.bias"] = _uniform(g, (rows,), cols, gain)
    return sd


def authors_mflyt_state(k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layers.0.weight": torch.randn(1, k, generator=g), "layers.0.bias": torch.randn(1, generator=g)}


def save(obj, path: Path, wrapper: bool) -> Path:
    if wrapper:  # the training checkpoint layout (open_clip_train/main.py)
        obj = {"epoch": 5000, "name": "flyt-run", "state_dict": obj, "optimizer": {"state": {}, "param_groups": []}}
    torch.save(obj, path)
    return path


def oracle_flyt(sd: dict[str, torch.Tensor], img16: np.ndarray, txt16: np.ndarray) -> np.ndarray:
    """The authors' forward pass, float64 numpy, from the equations in the module doc."""
    def unit(x):
        x = x.astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def p(key):
        return sd[key].double().numpy()

    x = np.concatenate([unit(img16), unit(txt16)], axis=1)
    n = len({k.split(".")[2] for k in sd if k.startswith("glu_model.")})
    for i in range(n):
        pre = f"glu_model.layers.{i}."
        a = x @ p(pre + "w1.weight").T + p(pre + "w1.bias")
        b = x @ p(pre + "w3.weight").T + p(pre + "w3.bias")
        x = (a / (1 + np.exp(-a)) * b) @ p(pre + "w2.weight").T + p(pre + "w2.bias")
    assert x.shape[1] == 1
    return x[:, 0]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def score_column(out: Path, stem: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(out / f"{stem}.parquet")
    return np.asarray(table.column("uid").to_pylist()), table.column(column).to_numpy()


def close(got: np.ndarray, want: np.ndarray) -> None:
    tol = 1e-5 * np.abs(want).max() + 1e-7
    assert got.dtype == np.float32
    assert np.abs(got.astype(np.float64) - want).max() <= tol


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    return make_datacomp_pool(tmp_path_factory.mktemp("dc") / "pool", shards=2, rows=40, seed=3)


@pytest.mark.parametrize("layers, hidden, wrapper", [
    (1, D, False),  # the released flyt.pt's shape: one layer, hidden = 1024, a bare state dict
    (3, 96, True),  # a multi-layer head (chained d -> h -> d layers), in a training checkpoint
    (2, 64, False),
])
def test_flyt_scores_match_an_independent_forward_pass(tmp_path, capsys, pool, layers, hidden, wrapper):
    sd = authors_flyt_state(layers, hidden, seed=layers)
    src = save(sd, tmp_path / "flyt.pt", wrapper)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    code, out, err = run_cli(capsys, "import-scorer", src, "--out", tmp_path / "scorer.pt")
    assert (code, err) == (0, "")
    assert f"FLYT head, {layers} layer(s), {D} -> {hidden} -> 1, pair b32, column 'flyt'; dropped 5 clip_model.*" in out
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before

    code, _, err = run_cli(capsys, "score", "--no-progress", "--pool", pool, "--out", tmp_path / "scores",
                           "--scorer", tmp_path / "scorer.pt", "--pair", "b32", "--batch-rows", "16")
    assert code == 0, err
    spread = []
    for stem in ("00000000", "00000001"):
        npz = np.load(pool / f"{stem}.npz")
        want = oracle_flyt(sd, npz["b32_img"], npz["b32_txt"])
        uids, got = score_column(tmp_path / "scores", stem, "flyt")
        assert list(uids) == pq.read_table(pool / f"{stem}.parquet").column("uid").to_pylist()
        close(got, want)
        spread.append(want.std() / (1e-12 + np.abs(want).mean()))
    assert min(spread) > 0.01  # the scores vary across rows: the comparison is not of a constant


def test_bare_wrapped_and_module_prefixed_import_to_the_same_scorer(tmp_path, capsys):
    sd = authors_flyt_state(2, 32)
    variants = {
        "bare": save(sd, tmp_path / "bare.pt", False),
        "wrapped": save(sd, tmp_path / "wrapped.pt", True),
        "module": save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "module.pt", True),
    }
    states = {}
    for name, src in variants.items():
        result = flyt.import_scorer(checkpoint=src, out=tmp_path / f"{name}.scorer.pt")
        assert result.kind == "flyt" and result.name == "flyt"
        payload = torch.load(result.out, weights_only=True)
        states[name] = payload["state_dict"]
        source = payload["source"]
        assert source["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert source["path"] == str(src.resolve())
        assert source["dropped"] == {"prefix": "clip_model.", "tensors": 5, "parameters": sum(
            v.numel() for k, v in sd.items() if k.startswith("clip_model."))}
        assert source["wrapper"] == (None if name == "bare" else "state_dict")
        assert source["prefix_stripped"] == ("module." if name == "module" else "")
        assert (source["pair"], source["layers"], source["hidden"], source["activation"]) == ("b32", 2, 32, "silu")
        assert payload["model"] == {"image_dim": EMBED, "text_dim": EMBED, "hidden_dim": 32, "depth": 2, "residual": False}
        assert not any(k.startswith("clip") for k in states[name])
    for name in ("wrapped", "module"):
        assert states[name].keys() == states["bare"].keys()
        assert all(torch.equal(states[name][k], states["bare"][k]) for k in states["bare"])


def test_mflyt_scores_match_the_authors_linear_layer(tmp_path, capsys, pool):
    # Two inputs from the DataComp parquet itself, one joined by uid from a --scores directory.
    extra = tmp_path / "extra"
    extra_values = {}
    rng = np.random.default_rng(7)
    for stem in ("00000000", "00000001"):
        uids = pq.read_table(pool / f"{stem}.parquet").column("uid").to_pylist()
        extra_values[stem] = (rng.standard_normal(len(uids)) * 3 + 10).astype(np.float32)  # far from standardised
        write_score_shard(extra, stem, np.asarray(uids), {"negclip_loss": extra_values[stem]})
    columns = ["clip_b32_similarity_score", "negclip_loss", "clip_l14_similarity_score"]
    sd = authors_mflyt_state(len(columns), seed=4)
    src = save(sd, tmp_path / "mflyt.pt", False)
    code, out, err = run_cli(capsys, "import-scorer", src, "--out", tmp_path / "m.pt", "--columns", *columns, "--name", "mflyt_paper")
    assert (code, err) == (0, "")
    assert "M-FLYT mixer over 3 input scores (clip_b32_similarity_score, negclip_loss, clip_l14_similarity_score)" in out
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["source"]["raw_inputs"] is True and payload["source"]["columns"] == columns
    assert payload["model"] == {"columns": columns, "mean": [0.0] * 3, "std": [1.0] * 3, "bias": True}

    code, _, err = run_cli(capsys, "score", "--no-progress", "--pool", pool, "--out", tmp_path / "scores",
                           "--scorer", tmp_path / "m.pt", "--scores", extra, "--pair", "b32")
    assert code == 0, err
    w, b = sd["layers.0.weight"].double().numpy()[0], float(sd["layers.0.bias"])
    for stem in ("00000000", "00000001"):
        table = pq.read_table(pool / f"{stem}.parquet")
        inputs = {c: table.column(c).to_numpy().astype(np.float64) for c in columns if c in table.column_names}
        inputs["negclip_loss"] = extra_values[stem].astype(np.float64)
        want = sum(w[k] * inputs[c] for k, c in enumerate(columns)) + b  # raw inputs, the authors' bias
        uids, got = score_column(tmp_path / "scores", stem, "mflyt_paper")
        assert list(uids) == table.column("uid").to_pylist()
        close(got, want)
        # and what the authors' own module computes: nn.Linear(K, 1) in float32 over float32 inputs
        lin = torch.nn.Linear(len(columns), 1)
        lin.load_state_dict({"weight": sd["layers.0.weight"], "bias": sd["layers.0.bias"]})
        x = torch.tensor(np.stack([inputs[c] for c in columns], axis=1), dtype=torch.float32)
        with torch.no_grad():
            theirs = lin(x).squeeze(-1).numpy()
        assert np.abs(got - theirs).max() <= 1e-6 * (1 + np.abs(theirs).max())


def test_imported_head_scored_with_the_wrong_pair_says_which(tmp_path, capsys, pool):
    flyt.import_scorer(checkpoint=save(authors_flyt_state(1, 16), tmp_path / "f.pt", False), out=tmp_path / "s.pt")
    code, _, err = run_cli(capsys, "score", "--no-progress", "--pool", pool, "--out", tmp_path / "o", "--scorer", tmp_path / "s.pt")
    assert code == 2
    assert "trained on 512+512-d embeddings, got 768+768-d (it reads pair b32: score with --pair b32)" in err.splitlines()[-1]


# --------------------------------------------------------------------------- refusals


def _clip_checkpoint(p):  # an open_clip CLIP (e.g. a model trained on a FLYT subset): no head
    g = torch.Generator().manual_seed(0)
    sd = {"module.positional_embedding": torch.randn(77, 512, generator=g), "module.visual.proj": torch.randn(768, 512, generator=g),
          "module.logit_scale": torch.tensor(4.6)}
    return save(sd, p, True)


def _base_only(p):  # the scoring model's base without its head
    return save({k: v for k, v in authors_flyt_state(1, 8).items() if k.startswith("clip_model.")}, p, False)


def _unknown_key(p):
    sd = authors_flyt_state(1, 8)
    sd["glu_model.norm.weight"] = torch.ones(D)
    return save(sd, p, False)


def _unknown_mixer_key(p):
    sd = authors_mflyt_state(2)
    sd["layers.1.weight"] = torch.ones(1, 1)
    return save(sd, p, False)


def _foreign(p):
    return save({"encoder.weight": torch.ones(3, 3)}, p, False)


def _narrow_head(p):  # input width 1000: not 2 x 512
    sd = {k: v for k, v in authors_flyt_state(1, 8).items() if k.startswith("glu_model.")}
    sd = {k: (v[..., :1000] if k.endswith(("w1.weight", "w3.weight")) else v) for k, v in sd.items()}
    return save(sd, p, False)


def _missing_layer_key(p):
    sd = authors_flyt_state(2, 8)
    del sd["glu_model.layers.1.w3.bias"]
    return save(sd, p, False)


def _wrong_inner_shape(p):  # an inner layer that maps back to 1 instead of d
    sd = authors_flyt_state(2, 8)
    sd["glu_model.layers.0.w2.weight"] = torch.ones(1, 8)
    return save(sd, p, False)


def _nan_weight(p):
    sd = authors_flyt_state(1, 8)
    sd["glu_model.layers.0.w3.weight"][2, 5] = float("nan")
    return save(sd, p, False)


def _base_mismatch(p):  # the base says 768-d embeddings, the head reads 2 x 512
    sd = authors_flyt_state(1, 8)
    sd["clip_model.visual.proj"] = torch.ones(1024, 768)
    return save(sd, p, False)


def _not_torch(p):
    p.write_bytes(b"this is not a torch checkpoint\n")
    return p


def _a_list(p):
    torch.save([torch.ones(2)], p)
    return p


def _flyt_scorer(p):
    flyt.import_scorer(checkpoint=save(authors_flyt_state(1, 8), p.with_name("src.pt"), False), out=p)
    return p


def _mflyt(p):
    return save(authors_mflyt_state(3), p, False)


def _flyt(p):
    return save(authors_flyt_state(1, 8), p, False)


BAD = [
    ("open_clip", _clip_checkpoint, [], "an open_clip CLIP checkpoint (key 'module.positional_embedding'), not an authors' scoring model"),
    ("base_only", _base_only, [], "an open_clip CLIP checkpoint (key 'clip_model.positional_embedding')"),
    ("unknown_key", _unknown_key, [], "unknown key 'glu_model.norm.weight' in an authors' FLYT state dict"),
    ("unknown_mixer_key", _unknown_mixer_key, ["--columns", "a", "b"], "unknown key 'layers.1.weight' in an authors' M-FLYT state dict"),
    ("foreign", _foreign, [], "unknown key 'encoder.weight': not an authors' scoring model"),
    ("narrow_head", _narrow_head, [], "the head's input width is 1000 (glu_model.layers.0.w1.weight has shape (8, 1000)), not 2 x 512"),
    ("wrong_pair", _flyt, ["--pair", "l14"], "the head's input width is 1024 (glu_model.layers.0.w1.weight has shape (8, 1024)), "
     "not 2 x 768 (pair l14: image and text embeddings of 768 each); the authors' released FLYT head reads ViT-B/32"),
    ("missing_key", _missing_layer_key, [], "missing key 'glu_model.layers.1.w3.bias'"),
    ("inner_shape", _wrong_inner_shape, [], "key 'glu_model.layers.0.w2.weight' has shape (1, 8), expected (1024, 8) (layer 0 of 2"),
    ("nan", _nan_weight, [], "key 'glu_model.layers.0.w3.weight' holds non-finite values"),
    ("base_mismatch", _base_mismatch, [], "the base's embeddings are 768-d (clip_model.visual.proj (1024, 768)) but the head reads 1024"),
    ("not_torch", _not_torch, [], "unreadable as a torch checkpoint"),
    ("a_list", _a_list, [], "holds a list, not a state dict"),
    ("flyt_scorer", _flyt_scorer, [], "already a flyt scorer.pt"),
    ("no_columns", _mflyt, [], "an M-FLYT mixer over 3 input scores (layers.0.weight (1, 3)): name its 3 input score columns"),
    ("few_columns", _mflyt, ["--columns", "a", "b"], "option --columns names 2 column(s) but"),
    ("dup_columns", _mflyt, ["--columns", "a", "b", "a"], "option --columns: column 'a' is named twice"),
    ("columns_for_flyt", _flyt, ["--columns", "a"], "option --columns is for an M-FLYT checkpoint"),
    ("missing_file", None, [], "checkpoint {src} does not exist"),
]


@pytest.mark.parametrize("case, make, extra, needle", BAD, ids=[b[0] for b in BAD])
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, capsys, case, make, extra, needle):
    src = tmp_path / "in" / "authors.pt"
    src.parent.mkdir()
    if make is not None:
        make(src)
    before = {p.name: p.read_bytes() for p in src.parent.iterdir()}
    out = tmp_path / "out" / "scorer.pt"
    out.parent.mkdir()
    code, stdout, err = run_cli(capsys, "import-scorer", src, "--out", out, *extra)
    assert code == 2
    assert stdout == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flyt import-scorer: error: "), err
    assert needle.format(src=src) in lines[0]
    assert "Traceback" not in err
    assert list(out.parent.iterdir()) == []  # nothing written, not even a temporary
    assert {p.name: p.read_bytes() for p in src.parent.iterdir()} == before  # inputs unchanged


def test_out_may_not_be_the_checkpoint(tmp_path, capsys):
    src = _flyt(tmp_path / "flyt.pt")
    before = src.read_bytes()
    code, _, err = run_cli(capsys, "import-scorer", src, "--out", src)
    assert code == 2 and "is the checkpoint being imported" in err
    assert src.read_bytes() == before


def test_api_is_lazy_and_typed(tmp_path):
    cfg = flyt.ImportScorerConfig(checkpoint=_flyt(tmp_path / "f.pt"), out=tmp_path / "s.pt")
    result = flyt.import_scorer(cfg)
    assert isinstance(result, flyt.ImportScorerResult) and result.out == tmp_path / "s.pt"
    with pytest.raises(flyt.FlytError, match="unknown option 'layers'"):
        flyt.import_scorer({"checkpoint": "x", "out": "y", "layers": 2})

