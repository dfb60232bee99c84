"""The authors' released FLYT and M-FLYT scoring models, read and converted to flyt's own modules.

The layout below is transcribed (described, not copied) from the authors' repository
the authors' repository formll/FLYT, commit 50035b3: ``flyt/factory.py`` (``GluFeedForwardLayer``,
``GluFeedForwardModel``, ``ScoringModel``, ``MixingModel``, ``create_scoring_model``),
``open_clip/src/open_clip/model.py`` (``CLIP.forward``), ``flyt/data.py`` (``ParquetReader``),
``open_clip/src/open_clip_train/main.py`` (how checkpoints are saved) and ``examples.ipynb`` (how
the released ``scoring_models/flyt.pt`` and ``mflyt.pt`` are loaded).

FLYT (``ScoringModel``: a CLIP base plus a GLU head), state dict keys::

    clip_model.<open_clip CLIP keys>          the base; frozen unless --train_full_scoring (off by
                                              default and in the README's command): dropped here
    glu_model.layers.<i>.w1.weight  (h, d)    glu_model.layers.<i>.w1.bias  (h,)
    glu_model.layers.<i>.w3.weight  (h, d)    glu_model.layers.<i>.w3.bias  (h,)
    glu_model.layers.<i>.w2.weight  (o_i, h)  glu_model.layers.<i>.w2.bias  (o_i,)
        i = 0 .. n-1, n = n_scoring_layers (default 1); o_i = d for i < n-1, o_{n-1} = 1

with d = 2 x the base's embedding width (``visual.output_dim``: 512 for ViT-B-32, so d = 1024) and
h = int(d * hidden_dim_mod) (default 1, so h = d). Every linear map has a bias. Every layer takes d
inputs (the authors' own comment notes they kept the inner layers at d -> h -> d). Forward::

    i, t = the base's image and text features, each L2-normalised (CLIP.forward calls encode_image /
           encode_text with normalize=True)
    x_0  = [i ; t]                                              image first, then text: (B, d)
    x_{k+1} = W2_k( silu(W1_k x_k + b1_k) * (W3_k x_k + b3_k) ) + b2_k      k = 0 .. n-1
    score = x_n                                                  (B, 1): one logit per example

No residual connection, no normalisation between layers, no scaling of the output. The activation is
silu: ``create_scoring_model`` could build relu (``glu_activation``), but ``train_flyt.py`` never
passes it and a state dict does not record it, so silu is assumed. The training loop softmaxes the
scores over a batch and the authors' SCS softmaxes them over the pool: a constant shift changes
neither. In flyt terms this is ``SwiGLUScorer(image_dim=d/2, text_dim=d/2, hidden_dim=h, depth=n,
residual=False)`` with layers 0 .. n-2 as ``blocks`` and layer n-1 as ``head`` (``SwiGLUScorer``
normalises each half and concatenates image first, as above).

M-FLYT (``MixingModel``: ``nn.Sequential(nn.Linear(K, 1))``), state dict keys::

    layers.0.weight  (1, K)      layers.0.bias  (1,)
    score = sum_k w_k s_k + b

over the K input scores s in the order of the training run's ``--parquet_fields``. ``ParquetReader``
reads each field's raw value from the parquet and stacks them: no standardisation. In flyt terms this
is ``ScoreMixer(columns, mean=0, std=1, bias=True)``. The released ``mflyt.pt`` has K = 12; the
authors' notebook lists its inputs (in order) as vit-b-32, vit-l-14, DFN-Base, DFN-FT,
CC2M-Classifier, IN1K-Classifier, FLYT, normsim_inf, negCLIPLoss, hype_lorentzian_distance,
hype_image_specificity, hype_text_specificity: the names of the user's columns must be given.

Files: ``create_scoring_model(full_scoring_pretrained=PATH)`` loads ``ckpt["state_dict"]`` when the
loaded object has that key (the training checkpoints ``scoring_epoch_<n>.pt``: epoch, name,
state_dict, optimizer) and the object itself otherwise (the released files are bare state dicts),
with a strict ``load_state_dict``. The scoring model is never wrapped in DistributedDataParallel, but
the resume path strips a ``module.`` prefix from every key when there is one, so that is accepted
here too (and recorded). Files are read with ``torch.load(weights_only=True)``: tensors and plain
containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flyt.errors import FlytError
from flyt.models.mixing import ScoreMixer
from flyt.models.scoring_head import SwiGLUScorer

BASE_PREFIX = "clip_model."
HEAD_KEY = re.compile(r"^glu_model\.layers\.(\d+)\.(w[123])\.(weight|bias)$")
MIXER_KEYS = ("layers.0.weight", "layers.0.bias")
# Keys of an open_clip CLIP state dict (the base alone, or a CLIP trained on a FLYT subset).
CLIP_HINTS = ("visual.", "transformer.", "token_embedding.", "positional_embedding", "text_projection",
              "logit_scale", "ln_final.")


@dataclass
class AuthorsCheckpoint:
    """What an authors' checkpoint holds, after the wrapper and the frozen base are taken off."""

    path: Path
    kind: str  # "flyt" (ScoringModel) | "mflyt" (MixingModel)
    head: dict[str, torch.Tensor]  # the authors' key names (without any "module." prefix)
    wrapper: str | None = None  # "state_dict" when the file wraps the state dict
    ignored: list[str] = field(default_factory=list)  # the wrapper's other keys (epoch, optimizer, ...)
    prefix: str = ""  # "module." when every key carried it
    dropped: dict = field(default_factory=dict)  # the frozen base: prefix, tensors, parameters
    base_dim: int | None = None  # the base's embedding width, from clip_model.visual.proj when present
    dtype: str = ""  # the head's stored dtype (converted to float32)

    def describe(self) -> str:
        if self.kind == "mflyt":
            return f"M-FLYT mixer over {self.head['layers.0.weight'].shape[1]} input scores"
        n, d, h = flyt_shape(self)
        return f"FLYT head, {n} layer(s), {d} -> {h} -> 1"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load(path: Path):
    try:  # memory-mapped where the format allows (the released flyt.pt carries a whole CLIP base)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:160] if text else ""
        detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise FlytError(f"{path}: unreadable as a torch checkpoint ({detail})") from None


def _shape(t) -> str:
    """A tensor's (or a shape's) shape as Python writes a tuple: (1024,), (1, 12)."""
    return str(tuple(int(s) for s in (t.shape if isinstance(t, torch.Tensor) else t)))


def read_authors_checkpoint(path) -> AuthorsCheckpoint:
    """Read ``path`` (the authors' ``flyt.pt`` / ``mflyt.pt`` or a training ``scoring_epoch_<n>.pt``)
    and classify it; anything else is refused in one line naming what was found."""
    path = Path(path)
    if not path.exists():
        raise FlytError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise FlytError(f"checkpoint {path} is not a file")
    obj = _load(path)
    if not isinstance(obj, dict):
        raise FlytError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if obj.get("format") == "flyt-scorer/1":
        raise FlytError(f"{path}: already a flyt scorer.pt (give it to flyt score --scorer as it is)")
    wrapper, ignored = None, []
    if "state_dict" in obj:  # the authors' test: a training checkpoint wraps the state dict
        wrapper, ignored = "state_dict", sorted(str(k) for k in obj if k != "state_dict")
        obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise FlytError(f"{path}: 'state_dict' holds a {type(obj).__name__}, not a state dict")
    if not obj:
        raise FlytError(f"{path}: the state dict is empty")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise FlytError(f"{path}: state dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise FlytError(f"{path}: key '{key}' holds a {type(value).__name__}, not a tensor")
    prefix = ""
    if all(k.startswith("module.") for k in obj):
        prefix, obj = "module.", {k[len("module."):]: v for k, v in obj.items()}
    ckpt = AuthorsCheckpoint(path, "", {}, wrapper, ignored, prefix)
    keys = list(obj)
    if any(k.startswith("glu_model.") for k in keys):
        return _flyt(ckpt, obj)
    if any(k.startswith("layers.") for k in keys):
        return _mflyt(ckpt, obj)
    clip = next((k for k in keys if k.removeprefix(BASE_PREFIX).startswith(CLIP_HINTS)), None)
    if clip is not None:
        raise FlytError(
            f"{path}: an open_clip CLIP checkpoint (key '{prefix}{clip}'), not an authors' scoring model: "
            "it has no glu_model.layers.* head (FLYT) and no layers.0.weight (M-FLYT)"
        )
    raise FlytError(
        f"{path}: unknown key '{prefix}{keys[0]}': not an authors' scoring model "
        "(FLYT: glu_model.layers.<i>.w1|w2|w3.weight|bias and clip_model.*; M-FLYT: layers.0.weight, layers.0.bias)"
    )


def _check_values(ckpt: AuthorsCheckpoint, head: dict[str, torch.Tensor]) -> None:
    dtypes = set()
    for key, value in head.items():
        if not value.is_floating_point():
            raise FlytError(f"{ckpt.path}: key '{ckpt.prefix}{key}' has dtype {value.dtype}, not a floating point dtype")
        if not torch.isfinite(value).all():
            raise FlytError(f"{ckpt.path}: key '{ckpt.prefix}{key}' holds non-finite values")
        dtypes.add(str(value.dtype).removeprefix("torch."))
    ckpt.dtype = ",".join(sorted(dtypes))


def _flyt(ckpt: AuthorsCheckpoint, sd: dict[str, torch.Tensor]) -> AuthorsCheckpoint:
    head: dict[str, torch.Tensor] = {}
    base = 0
    base_params = 0
    for key, value in sd.items():
        if key.startswith(BASE_PREFIX):
            base += 1
            base_params += value.numel()
        elif HEAD_KEY.match(key):
            head[key] = value
        else:
            raise FlytError(
                f"{ckpt.path}: unknown key '{ckpt.prefix}{key}' in an authors' FLYT state dict "
                "(it holds glu_model.layers.<i>.w1|w2|w3.weight|bias and clip_model.*)"
            )
    layers = sorted({int(HEAD_KEY.match(k).group(1)) for k in head})
    n = len(layers)
    for i in range(n):
        for w in ("w1", "w2", "w3"):
            for part in ("weight", "bias"):
                key = f"glu_model.layers.{i}.{w}.{part}"
                if key not in head:
                    raise FlytError(f"{ckpt.path}: missing key '{ckpt.prefix}{key}' (the head has layers 0 .. {layers[-1]})")
    ckpt.kind, ckpt.head = "flyt", head
    ckpt.dropped = {"prefix": BASE_PREFIX, "tensors": base, "parameters": base_params}
    first = head["glu_model.layers.0.w1.weight"]
    if first.ndim != 2:
        raise FlytError(f"{ckpt.path}: key '{ckpt.prefix}glu_model.layers.0.w1.weight' has shape {_shape(first)}, expected (hidden, input)")
    h, d = first.shape
    for i in range(n):
        out = d if i < n - 1 else 1
        expected = {"w1.weight": (h, d), "w1.bias": (h,), "w3.weight": (h, d), "w3.bias": (h,),
                    "w2.weight": (out, h), "w2.bias": (out,)}
        for part, shape in expected.items():
            key = f"glu_model.layers.{i}.{part}"
            if tuple(head[key].shape) != shape:
                raise FlytError(
                    f"{ckpt.path}: key '{ckpt.prefix}{key}' has shape {_shape(head[key])}, expected {_shape(shape)} "
                    f"(layer {i} of {n} maps {d} -> {h} -> {out})"
                )
    proj = sd.get(BASE_PREFIX + "visual.proj")
    if proj is not None and proj.ndim == 2:
        ckpt.base_dim = int(proj.shape[1])
        if 2 * ckpt.base_dim != d:
            raise FlytError(
                f"{ckpt.path}: the base's embeddings are {ckpt.base_dim}-d (clip_model.visual.proj {_shape(proj)}) "
                f"but the head reads {d} = 2 x {d / 2:g} inputs"
            )
    _check_values(ckpt, head)
    return ckpt


def _mflyt(ckpt: AuthorsCheckpoint, sd: dict[str, torch.Tensor]) -> AuthorsCheckpoint:
    for key in sd:
        if key not in MIXER_KEYS:
            raise FlytError(
                f"{ckpt.path}: unknown key '{ckpt.prefix}{key}' in an authors' M-FLYT state dict "
                "(it holds layers.0.weight and layers.0.bias)"
            )
    for key in MIXER_KEYS:
        if key not in sd:
            raise FlytError(f"{ckpt.path}: missing key '{ckpt.prefix}{key}' (an authors' M-FLYT state dict holds both)")
    weight, bias = sd["layers.0.weight"], sd["layers.0.bias"]
    if weight.ndim != 2 or weight.shape[0] != 1 or weight.shape[1] < 1:
        raise FlytError(f"{ckpt.path}: key '{ckpt.prefix}layers.0.weight' has shape {_shape(weight)}, expected (1, K)")
    if tuple(bias.shape) != (1,):
        raise FlytError(f"{ckpt.path}: key '{ckpt.prefix}layers.0.bias' has shape {_shape(bias)}, expected (1,)")
    ckpt.kind, ckpt.head = "mflyt", dict(sd)
    _check_values(ckpt, ckpt.head)
    return ckpt


def flyt_shape(ckpt: AuthorsCheckpoint) -> tuple[int, int, int]:
    """(layers n, input width d, hidden width h) of a FLYT head."""
    n = len({k.split(".")[2] for k in ckpt.head})
    h, d = ckpt.head["glu_model.layers.0.w1.weight"].shape
    return n, int(d), int(h)


def flyt_head(ckpt: AuthorsCheckpoint, embed_dim: int, pair: str) -> SwiGLUScorer:
    """The authors' GLU head as a float32 ``SwiGLUScorer`` over ``embed_dim``-d image and text
    embeddings (the pair's), chained without residuals, with the authors' weights."""
    n, d, h = flyt_shape(ckpt)
    if d != 2 * embed_dim:
        raise FlytError(
            f"{ckpt.path}: the head's input width is {d} (glu_model.layers.0.w1.weight has shape ({h}, {d})), "
            f"not 2 x {embed_dim} (pair {pair}: image and text embeddings of {embed_dim} each)"
            + ("; the authors' released FLYT head reads ViT-B/32 embeddings: use pair b32" if d == 1024 else "")
        )
    model = SwiGLUScorer(embed_dim, embed_dim, hidden_dim=h, depth=n, residual=False)
    state = {}
    for i in range(n):
        target = f"blocks.{i}" if i < n - 1 else "head"
        for part in ("w1.weight", "w1.bias", "w2.weight", "w2.bias", "w3.weight", "w3.bias"):
            state[f"{target}.{part}"] = ckpt.head[f"glu_model.layers.{i}.{part}"].to(torch.float32)
    model.load_state_dict(state)
    return model.eval()


def mflyt_mixer(ckpt: AuthorsCheckpoint, columns: list[str] | None) -> ScoreMixer:
    """The authors' mixing layer as a ``ScoreMixer`` over ``columns`` (their order) that reads them
    raw (mean 0, std 1) and keeps the bias, as the authors scored."""
    weight = ckpt.head["layers.0.weight"]
    k = int(weight.shape[1])
    if not columns:
        raise FlytError(
            f"{ckpt.path}: an M-FLYT mixer over {k} input scores (layers.0.weight {_shape(weight)}): "
            f"name its {k} input score columns, in the authors' order, with --columns"
        )
    if len(columns) != k:
        raise FlytError(
            f"option --columns names {len(columns)} column(s) but {ckpt.path} mixes {k} (layers.0.weight {_shape(weight)})"
        )
    mixer = ScoreMixer(list(columns), [0.0] * k, [1.0] * k, bias=True)
    mixer.load_state_dict({
        "mean": mixer.mean, "std": mixer.std,
        "linear.weight": weight.to(torch.float32), "linear.bias": ckpt.head["layers.0.bias"].to(torch.float32),
    })
    return mixer.eval()
