"""The training configuration: typed dataclasses, built from YAML + ``--set key=value`` overrides or in Python.

    cfg = load_config("train.yaml", ["steps=100", "reference.init=random"])   # YAML <- overrides
    cfg = TrainConfig.from_dict({"pool": "pool/", "tasks": ["task/"]})        # a mapping, in Python

Both check every key against the fields (an unknown key is an error naming the known ones), coerce
numbers YAML read as strings ('1e-3'), and validate in one place (``TrainConfig.validated``), which
also resolves relative paths against the config file's directory. ``to_dict()`` is the nested mapping
written to the run's config.yaml and stored in scorer.pt.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flyt.errors import FlytError

MODES = ("flyt", "mflyt")
# open_clip's init ln(1/0.07), as flyt.models.reference.CLIP_LOGIT_SCALE_INIT; not imported from there,
# which would load torch into every `flyt` command's start-up (the CLI builds --help from this module)
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)
PAIRS = ("b32", "l14")
SCORE_TRANSFORMS = ("zscore", "rank")  # flyt.models.mixing.TRANSFORMS (not imported: it loads torch)
REFERENCE_INITS = ("auto", "identity", "random")
# flyt.sampling.clocks.MAX_PENALTY (not imported: this module stays light, see above)
SCS_MAX_PENALTY = 512.0
# the largest finite value of each training dtype (a number beyond it cannot become a tensor)
FLOAT_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}


@dataclass
class ReferenceConfig:
    """The reference model theta whose one-step update the meta-gradient differentiates through."""

    kind: str = "embedding"  # embedding: projection heads on the frozen embeddings | openclip: a whole CLIP
    embed_dim: int | None = None  # default: the embeddings' own dimension
    init: str = "auto"  # identity when image/text share one space, else random
    logit_scale: float = CLIP_LOGIT_SCALE_INIT  # initial LOG logit scale, ln(1/0.07)
    optimizer: str = "adamw"  # adamw (the paper) | sgd
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.98  # AdamW second-moment decay
    eps: float = 1.0e-6  # AdamW denominator epsilon
    weight_decay: float = 0.2  # AdamW decoupled weight decay (on >= 2-D weights only)
    # kind openclip only (the reference trains on raw images; `tasks` are then clip_benchmark
    # webdataset directories: classnames.txt, zeroshot_classification_templates.txt, train/*.tar)
    model: str = "ViT-B-32"  # an open_clip model name
    weights: str | None = None  # a local checkpoint file; None = random init (nothing is downloaded)
    pool_shards: list[str] = field(default_factory=list)  # webdataset shards of the pool's raw pairs (by uid)
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    device: str = "auto"  # auto (cuda:LOCAL_RANK when available) | cpu | cuda
    chunk_size: int | None = None  # run the towers on this many upstream rows at a time (bounds activation memory)


@dataclass
class ScorerHeadConfig:
    """The FLYT scorer: a SwiGLU head over the concatenated image and text embeddings (mode flyt)."""

    hidden_dim: int | None = None  # default: input dimension
    depth: int = 1  # number of SwiGLU blocks
    cosine_init: bool = False  # start as the cosine similarity of the two embeddings
    init_noise: float = 0.01  # std of the noise added to the initial weights
    weight_decay: float = 0.0  # the scorer optimizer's AdamW weight decay


@dataclass
class IterativeConfig:
    """Iterative FLYT (docs/kstep.md): rounds of (train the scorer round_steps steps; score the pool; draw it
    with Soft Cap Sampling; continue the reference on the drawn multiset; train the scorer further)."""

    round_steps: int = 0  # scorer steps per round; 0 = off (one round: plain FLYT). Rounds: ceil(steps / round_steps)
    reference_steps: int = 100  # reference optimizer steps on each round's drawn multiset (batches of upstream_batch)
    scs_penalty: float = 0.15  # Soft Cap Sampling's penalty Delta (a drawn example's weight drops by e^-Delta)
    scs_total: int | None = None  # SCS draws, with repeats; null = as many as the pool (after pool_fraction) has rows


@dataclass
class TrainConfig:
    """A FLYT / M-FLYT training run (SPEC.md sections 2 and 3)."""

    mode: str = "flyt"  # flyt: SwiGLU head over embeddings | mflyt: linear mix of score columns
    name: str | None = None  # the score column a trained scorer writes (default: the mode)
    pool: str | None = None  # flyt pool directory, or DataComp metadata directory (parquet + npz)
    pair: str = "l14"  # DataComp pool: the embedding pair to read, b32 | l14 (flyt pools: ignored)
    pool_fraction: float = 1.0  # train on a uniform, shard-independent sample of the pool (by uid) this size
    # auto: hold the pool's embeddings in memory when they take < 2 GiB (rows x fraction x (d_img + d_txt) x 4
    # bytes), else stream them through a buffer of max(65536, upstream_batch) rows; an integer: stream with that many rows (at least
    # upstream_batch). Streaming draws rows with replacement in blocks of pool_block rows from random shards
    # into a shuffle buffer costing pool_buffer x (d_img + d_txt) x 4 bytes (l14: 6 KiB a row) plus one block
    pool_buffer: int | str = "auto"
    pool_block: int = 1024  # streaming: consecutive rows read from a shard at a time
    scores: list[str] = field(default_factory=list)  # extra score directories, joined to the pool by uid
    score_columns: list[str] = field(default_factory=list)  # M-FLYT inputs
    # M-FLYT: clip each standardised input to [-score_clip, score_clip] (None: plain z-scores, the paper). A
    # few outliers of a mostly-constant score otherwise dominate its z-scores and hence its learned weight.
    score_clip: float | None = None
    # M-FLYT: how each input is standardised: zscore (the paper) | rank (its empirical CDF on the pool, centred,
    # within +-sqrt(3); ties and near-constant scores carry little signal; flyt.models.mixing)
    score_transform: str = "zscore"
    tasks: list[str] = field(default_factory=list)  # downstream task directories
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)  # the reference model theta
    scorer: ScorerHeadConfig = field(default_factory=ScorerHeadConfig)  # the FLYT scorer head
    steps: int = 5000  # training steps
    warmup_steps: int = 100  # linear warm-up of the scorer's learning rate, then cosine decay to 0
    upstream_batch: int = 4096  # pool examples per step
    downstream_batch: int = 3072  # examples per task per step
    scorer_lr: float = 1.0e-3  # the scorer's peak learning rate
    reference_lr: float = 5.0e-5  # the reference's (inner) learning rate
    downstream_logit_scale: float = CLIP_LOGIT_SCALE_INIT  # psi init: LOG downstream logit scale, ln(1/0.07)
    downstream_scale_lr: float = 1.0e-3  # psi's Adam learning rate
    update_reference: bool = True  # move the reference to theta' after each step (else it stays fixed)
    # K-step FLYT (docs/kstep.md; embedding reference only): the reference takes K optimizer steps on K
    # successive score-weighted upstream batches and the scorer gets the exact gradient through all K
    inner_steps: int = 1  # K; 1 = the paper's one-step meta-gradient
    truncate: int | None = None  # differentiate through only the last k of the K steps; null = all K (exact)
    reference_advance: int | None = None  # after each scorer step the reference moves by K steps (null or K) or 1
    iterative: IterativeConfig = field(default_factory=IterativeConfig)  # iterative FLYT (round_steps > 0)
    seed: int = 0  # seeds the init and every step's draws
    out: str = "runs/flyt"  # run directory: config.yaml, metrics.jsonl, checkpoints/, scorer.pt
    checkpoint_every: int = 100  # write checkpoints/latest.pt every this many steps
    keep_checkpoint_every: int = 1000  # also keep checkpoints/step_XXXXXXX.pt at these steps
    dtype: str = "float32"  # float32 | float64

    @classmethod
    def from_dict(cls, mapping: Mapping, base_dir: str | os.PathLike = ".") -> TrainConfig:
        """Defaults <- ``mapping`` (nested like ``to_dict()``), validated; relative paths resolved
        against ``base_dir``."""
        if not isinstance(mapping, Mapping):
            raise FlytError(f"the config must be a mapping of keys to values, got {type(mapping).__name__}")
        return _apply(cls(), mapping).validated(base_dir)

    def to_dict(self) -> dict:
        """The nested mapping of keys to plain values (config.yaml, scorer.pt's train config)."""
        return dataclasses.asdict(self)

    def validated(self, base_dir: str | os.PathLike = ".") -> TrainConfig:
        """A checked copy: lists normalised, relative paths resolved against ``base_dir``, ``name``
        defaulted to the mode. Raises FlytError naming the first bad key. Idempotent."""
        return _validate(_apply(type(self)(), self.to_dict()), Path(base_dir))


def config_keys(cls=TrainConfig, prefix: str = "") -> list[str]:
    """Every key a config may set, dotted for nested ones, in field order (for --help)."""
    keys = []
    for f in dataclasses.fields(cls):
        nested = _nested_type(cls, f.name)
        keys += config_keys(nested, f"{prefix}{f.name}.") if nested else [f"{prefix}{f.name}"]
    return keys


def parse_override(item: str) -> dict:
    """'a.b=value' -> {'a': {'b': value}} with value parsed as YAML (numbers, booleans, lists)."""
    if "=" not in item:
        raise FlytError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(path=None, overrides: list[str] | tuple = ()) -> TrainConfig:
    """Defaults <- YAML file <- overrides, validated; relative paths resolved against the file."""
    cfg = TrainConfig()
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise FlytError(f"config file {path} is a directory")
        if not path.is_file():
            raise FlytError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise FlytError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})") from None
        except OSError as exc:
            raise FlytError(f"config file {path}: cannot read it ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise FlytError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise FlytError(f"{path}: the config must be a mapping of keys to values")
        cfg = _apply(cfg, data)
        base_dir = path.parent
    for item in overrides:
        cfg = _apply(cfg, parse_override(item))
    return cfg.validated(base_dir)


def dump(cfg: TrainConfig) -> str:
    """config.yaml's text: the nested mapping, in field order."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Building (key and shape checks) and validation (value checks), each in one place


def _apply(obj, update: Mapping, prefix: str = ""):
    """A copy of the dataclass ``obj`` with ``update``'s keys set (nested mappings merged into the
    nested configs); unknown keys and non-mappings for nested configs are errors."""
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in update.items():
        full = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(f"{prefix}{k}" for k in names)
            raise FlytError(f"unknown config key '{full}' (known: {known})")
        nested = _nested_type(type(obj), key)
        if nested is not None:
            if isinstance(value, nested):  # a ReferenceConfig / ScorerHeadConfig built in Python
                value = dataclasses.asdict(value)
            if not isinstance(value, Mapping):
                raise FlytError(f"config key '{full}' must be a mapping")
            changes[key] = _apply(getattr(obj, key), value, prefix=f"{full}.")
        else:
            changes[key] = _coerce_number(_field_types(type(obj))[key], value)
    return dataclasses.replace(obj, **changes)


def _coerce_number(annotation, value):
    """YAML reads '1e-3' (no dot) as a string; accept it where the key holds a number."""
    if isinstance(value, str) and _allowed(annotation) & {int, float}:
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return value


def _validate(cfg: TrainConfig, base_dir: Path) -> TrainConfig:
    ref = cfg.reference
    if cfg.mode not in MODES:
        raise FlytError(f"config key 'mode' must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if not cfg.pool:
        raise FlytError("config key 'pool' is required (a flyt pool or DataComp metadata directory)")
    if not cfg.tasks:
        raise FlytError("config key 'tasks' is required (a list of task directories)")
    cfg.tasks, cfg.scores = _as_list(cfg.tasks), _as_list(cfg.scores)
    cfg.score_columns = _as_list(cfg.score_columns)
    ref.pool_shards = _as_list(ref.pool_shards)
    if cfg.mode == "mflyt" and not cfg.score_columns:
        raise FlytError("config key 'score_columns' is required for mode mflyt")
    if cfg.score_clip is not None and (not isinstance(cfg.score_clip, (int, float)) or isinstance(cfg.score_clip, bool)
                                       or not 0 < cfg.score_clip < math.inf):
        raise FlytError(f"config key 'score_clip' must be a positive number or null, got {cfg.score_clip!r}")
    if cfg.score_transform not in SCORE_TRANSFORMS:
        raise FlytError(f"config key 'score_transform' must be one of {', '.join(SCORE_TRANSFORMS)}, "
                        f"got {cfg.score_transform!r}")
    if cfg.pair not in PAIRS:
        raise FlytError(f"config key 'pair' must be b32 or l14, got {cfg.pair!r}")
    for key in ("steps", "upstream_batch", "downstream_batch", "checkpoint_every", "keep_checkpoint_every",
                "inner_steps"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise FlytError(f"config key '{key}' must be a positive integer, got {value!r}")
    if not isinstance(cfg.warmup_steps, int) or isinstance(cfg.warmup_steps, bool) or cfg.warmup_steps < 0:
        raise FlytError(f"config key 'warmup_steps' must be a non-negative integer, got {cfg.warmup_steps!r}")
    for key in ("scorer_lr", "reference_lr", "downstream_scale_lr"):
        value = getattr(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise FlytError(f"config key '{key}' must be a finite non-negative number, got {value!r}")
    buffer = cfg.pool_buffer
    if buffer != "auto" and (not isinstance(buffer, int) or isinstance(buffer, bool) or buffer < 1):
        raise FlytError(f"config key 'pool_buffer' must be auto or a positive number of rows, got {buffer!r}")
    if isinstance(buffer, int) and buffer < cfg.upstream_batch:
        raise FlytError(f"config key 'pool_buffer' ({buffer} rows) must hold at least one upstream batch "
                        f"(upstream_batch {cfg.upstream_batch})")
    if not isinstance(cfg.pool_block, int) or isinstance(cfg.pool_block, bool) or cfg.pool_block < 1:
        raise FlytError(f"config key 'pool_block' must be a positive integer, got {cfg.pool_block!r}")
    f = cfg.pool_fraction
    if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1:
        raise FlytError(f"config key 'pool_fraction' must be in (0, 1], got {f!r}")
    if cfg.dtype not in ("float32", "float64"):
        raise FlytError(f"config key 'dtype' must be float32 or float64, got {cfg.dtype!r}")
    if ref.kind not in ("embedding", "openclip"):
        raise FlytError(f"config key 'reference.kind' must be embedding or openclip, got {ref.kind!r}")
    if ref.kind == "openclip":
        if not ref.pool_shards:
            raise FlytError("config key 'reference.pool_shards' is required for reference.kind openclip")
        if ref.precision not in ("auto", "fp32", "bf16"):
            raise FlytError(f"config key 'reference.precision' must be auto, fp32 or bf16, got {ref.precision!r}")
        if ref.device not in ("auto", "cpu", "cuda"):
            raise FlytError(f"config key 'reference.device' must be auto, cpu or cuda, got {ref.device!r}")
    _check_unrolled(cfg)
    if ref.optimizer not in ("adamw", "sgd"):
        raise FlytError(f"config key 'reference.optimizer' must be adamw or sgd, got {ref.optimizer!r}")
    if ref.init not in REFERENCE_INITS:
        raise FlytError(f"config key 'reference.init' must be {', '.join(REFERENCE_INITS)}, got {ref.init!r}")
    # every other key: the type its field declares (paths may be os.PathLike; ints pass for floats)
    _check_types(cfg)
    _check_numbers(cfg)

    def resolve(p) -> str:
        return str(p if Path(p).is_absolute() else (base_dir / p))

    cfg.pool = resolve(cfg.pool)
    cfg.tasks = [resolve(t) for t in cfg.tasks]
    cfg.scores = [resolve(s) for s in cfg.scores]
    cfg.out = resolve(cfg.out)
    if ref.kind == "openclip":
        ref.pool_shards = [resolve(p) for p in ref.pool_shards]
        ref.weights = resolve(ref.weights) if ref.weights else None
    cfg.name = cfg.name or cfg.mode
    for key in ("score_columns", "tasks", "scores"):  # a column or directory twice would count twice
        _check_unique(key, getattr(cfg, key))
    return cfg


def _check_unrolled(cfg: TrainConfig) -> None:
    """K-step and iterative FLYT: their keys' ranges, and the embedding reference they need."""
    k, it = cfg.inner_steps, cfg.iterative
    if cfg.truncate is not None and (not isinstance(cfg.truncate, int) or isinstance(cfg.truncate, bool)
                                     or not 1 <= cfg.truncate <= k):
        raise FlytError(f"config key 'truncate' must be null or an integer in [1, inner_steps = {k}], got {cfg.truncate!r}")
    if cfg.reference_advance not in (None, 1, k) or isinstance(cfg.reference_advance, bool):
        raise FlytError(f"config key 'reference_advance' must be null, 1 or inner_steps ({k}), got {cfg.reference_advance!r}")
    for key, low in (("round_steps", 0), ("reference_steps", 1)):
        value = getattr(it, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            kind = "a non-negative" if low == 0 else "a positive"
            raise FlytError(f"config key 'iterative.{key}' must be {kind} integer, got {value!r}")
    if it.scs_total is not None and (not isinstance(it.scs_total, int) or isinstance(it.scs_total, bool)
                                     or it.scs_total < 1):
        raise FlytError(f"config key 'iterative.scs_total' must be null or a positive integer, got {it.scs_total!r}")
    p = it.scs_penalty
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 < p <= SCS_MAX_PENALTY:
        raise FlytError(f"config key 'iterative.scs_penalty' must be a number in (0, {SCS_MAX_PENALTY:g}], got {p!r}")
    if cfg.reference.kind != "embedding":
        if k > 1:
            raise FlytError(f"config key 'inner_steps' must be 1 with reference.kind {cfg.reference.kind} "
                            f"(K-step FLYT needs the embedding reference), got {k}")
        if it.round_steps:
            raise FlytError(f"config key 'iterative.round_steps' must be 0 with reference.kind {cfg.reference.kind} "
                            f"(iterative FLYT needs the embedding reference), got {it.round_steps}")


def _check_numbers(cfg: TrainConfig) -> None:
    """Every number finite, representable in the training dtype and in its key's range (types are
    checked before: a value here is an int, a float or, where the key allows it, None)."""
    ref, head = cfg.reference, cfg.scorer
    largest = FLOAT_MAX[cfg.dtype]
    for key, value in (("pool_fraction", cfg.pool_fraction), ("scorer_lr", cfg.scorer_lr),
                       ("reference_lr", cfg.reference_lr), ("downstream_logit_scale", cfg.downstream_logit_scale),
                       ("downstream_scale_lr", cfg.downstream_scale_lr), ("reference.logit_scale", ref.logit_scale),
                       ("reference.beta1", ref.beta1), ("reference.beta2", ref.beta2), ("reference.eps", ref.eps),
                       ("reference.weight_decay", ref.weight_decay), ("scorer.init_noise", head.init_noise),
                       ("scorer.weight_decay", head.weight_decay)):
        if not math.isfinite(value):
            raise FlytError(f"config key '{key}' must be a finite number, got {value!r}")
        if abs(value) > largest:  # torch would fail converting it, or overflow on the first step
            raise FlytError(f"config key '{key}' must be at most {largest:.4g} in magnitude for dtype {cfg.dtype}, "
                            f"got {value!r}")
    if not 0 <= cfg.seed < 2**63:
        raise FlytError(f"config key 'seed' must be an integer in [0, 2**63), got {cfg.seed!r}")
    for key, value in (("reference.beta1", ref.beta1), ("reference.beta2", ref.beta2)):
        if not 0 <= value < 1:
            raise FlytError(f"config key '{key}' must be in [0, 1), got {value!r}")
    if ref.eps <= 0:
        raise FlytError(f"config key 'reference.eps' must be a positive number, got {ref.eps!r}")
    for key, value in (("reference.weight_decay", ref.weight_decay), ("scorer.weight_decay", head.weight_decay),
                       ("scorer.init_noise", head.init_noise)):
        if value < 0:
            raise FlytError(f"config key '{key}' must be a non-negative number, got {value!r}")
    if head.depth < 1:
        raise FlytError(f"config key 'scorer.depth' must be a positive integer, got {head.depth!r}")
    for key, value in (("reference.embed_dim", ref.embed_dim), ("scorer.hidden_dim", head.hidden_dim),
                       ("reference.chunk_size", ref.chunk_size)):
        if value is not None and value < 1:
            raise FlytError(f"config key '{key}' must be a positive integer or null, got {value!r}")


def _check_unique(key: str, values: list) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise FlytError(f"config key '{key}' lists {value!r} twice")
        seen.add(value)


PATH_KEYS = {"pool", "tasks", "scores", "out", "reference.weights", "reference.pool_shards"}


def _check_types(obj, prefix: str = "") -> None:
    for key, annotation in _field_types(type(obj)).items():
        full, value = f"{prefix}{key}", getattr(obj, key)
        if dataclasses.is_dataclass(value):
            _check_types(value, f"{full}.")
            continue
        allowed = _allowed(annotation)
        is_path = full in PATH_KEYS
        if list in allowed:
            if not isinstance(value, list) or not all(_is_instance(v, {str}, is_path) for v in value):
                raise FlytError(f"config key '{full}' must be a list of strings, got {value!r}")
        elif not _is_instance(value, allowed, is_path):
            names = " or ".join(t.__name__ for t in allowed if t is not type(None)) + (
                " or null" if type(None) in allowed else "")
            raise FlytError(f"config key '{full}' must be {names}, got {value!r}")


def _is_instance(value, allowed: set, is_path: bool) -> bool:
    if isinstance(value, bool):  # bool is an int subclass: only where the field says bool
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    if is_path and isinstance(value, os.PathLike):
        return True
    return isinstance(value, tuple(allowed))


def _as_list(value) -> list:
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value) if isinstance(value, tuple) else value


@functools.cache
def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def _allowed(annotation) -> set:
    """The runtime classes an annotation admits: ``int | None`` -> {int, NoneType}, list[str] -> {list}."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(_allowed(a) for a in typing.get_args(annotation)))
    return {typing.get_origin(annotation) or annotation}


def _nested_type(cls, name: str):
    annotation = _field_types(cls)[name]
    return annotation if dataclasses.is_dataclass(annotation) else None
