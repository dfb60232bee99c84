"""Training configuration: YAML file + ``--set key=value`` overrides, validated against the known keys."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from flyt.errors import FlytError

DEFAULTS: dict = {
    "mode": "flyt",  # flyt: SwiGLU head over embeddings | mflyt: linear mix of score columns
    "name": None,  # the score column a trained scorer writes (default: the mode)
    "pool": None,  # flyt pool directory
    "pool_fraction": 1.0,  # train on a uniform, shard-independent sample of the pool (by uid) this size
    "scores": [],  # extra score directories, joined to the pool by uid (M-FLYT inputs)
    "score_columns": [],  # M-FLYT inputs
    "tasks": [],  # downstream task directories
    "reference": {
        "kind": "embedding",  # embedding: projection heads on the frozen embeddings | openclip: a whole CLIP
        "embed_dim": None,  # default: the embeddings' own dimension
        "init": "auto",  # identity when image/text share one space, else random
        "logit_scale": 2.659260036932778,  # ln(1/0.07)
        "optimizer": "adamw",  # adamw (the paper) | sgd
        "beta1": 0.9,
        "beta2": 0.98,
        "eps": 1.0e-6,
        "weight_decay": 0.2,
        # kind openclip only (the reference trains on raw images; `tasks` are then clip_benchmark
        # webdataset directories: classnames.txt, zeroshot_classification_templates.txt, train/*.tar)
        "model": "ViT-B-32",  # an open_clip model name
        "weights": None,  # a local checkpoint file; None = random init (nothing is downloaded)
        "pool_shards": [],  # webdataset shard patterns holding the pool's raw pairs (joined by uid)
        "precision": "auto",  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
        "device": "auto",  # auto (cuda:LOCAL_RANK when available) | cpu | cuda
        "chunk_size": None,  # run the towers on this many upstream rows at a time (bounds activation memory)
    },
    "scorer": {
        "hidden_dim": None,  # default: input dimension
        "depth": 1,
        "cosine_init": False,
        "init_noise": 0.01,
        "weight_decay": 0.0,
    },
    "steps": 5000,
    "warmup_steps": 100,
    "upstream_batch": 4096,
    "downstream_batch": 3072,
    "scorer_lr": 1.0e-3,
    "reference_lr": 5.0e-5,
    "downstream_logit_scale": 2.659260036932778,  # psi init, ln(1/0.07)
    "downstream_scale_lr": 1.0e-3,
    "update_reference": True,
    "seed": 0,
    "out": "runs/flyt",
    "checkpoint_every": 100,
    "keep_checkpoint_every": 1000,  # also keep checkpoints/step_XXXXXXX.pt at these steps
    "dtype": "float32",
}

MODES = ("flyt", "mflyt")


def _merge(base: dict, update: dict, prefix: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        full = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(f"{prefix}{k}" for k in base)
            raise FlytError(f"unknown config key '{full}' (known: {known})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise FlytError(f"config key '{full}' must be a mapping")
            out[key] = _merge(base[key], value, prefix=f"{full}.")
        else:
            out[key] = _coerce_number(base[key], value)
    return out


def _coerce_number(default, value):
    """YAML reads '1e-3' (no dot) as a string; accept it where the key holds a number."""
    if isinstance(value, str) and (default is None or (isinstance(default, (int, float)) and not isinstance(default, bool))):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return value


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


def load_config(path=None, overrides: list[str] | tuple = ()) -> dict:
    """Defaults <- YAML file <- overrides, validated; relative paths resolved against the file."""
    cfg = copy.deepcopy(DEFAULTS)
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FlytError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise FlytError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise FlytError(f"{path}: the config must be a mapping of keys to values")
        cfg = _merge(cfg, data)
        base_dir = path.parent
    for item in overrides:
        cfg = _merge(cfg, parse_override(item))
    return validate(cfg, base_dir)


def validate(cfg: dict, base_dir: Path = Path(".")) -> dict:
    cfg = _merge(DEFAULTS, cfg)
    if cfg["mode"] not in MODES:
        raise FlytError(f"config key 'mode' must be one of {', '.join(MODES)}, got {cfg['mode']!r}")
    if not cfg["pool"]:
        raise FlytError("config key 'pool' is required (a flyt pool directory)")
    if not cfg["tasks"]:
        raise FlytError("config key 'tasks' is required (a list of task directories)")
    if isinstance(cfg["tasks"], str):
        cfg["tasks"] = [cfg["tasks"]]
    if isinstance(cfg["scores"], str):
        cfg["scores"] = [cfg["scores"]]
    if cfg["mode"] == "mflyt" and not cfg["score_columns"]:
        raise FlytError("config key 'score_columns' is required for mode mflyt")
    for key in ("steps", "upstream_batch", "downstream_batch", "checkpoint_every", "keep_checkpoint_every"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise FlytError(f"config key '{key}' must be a positive integer, got {cfg[key]!r}")
    if not isinstance(cfg["warmup_steps"], int) or cfg["warmup_steps"] < 0:
        raise FlytError(f"config key 'warmup_steps' must be a non-negative integer, got {cfg['warmup_steps']!r}")
    for key in ("scorer_lr", "reference_lr", "downstream_scale_lr"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
            raise FlytError(f"config key '{key}' must be a non-negative number, got {cfg[key]!r}")
    f = cfg["pool_fraction"]
    if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1:
        raise FlytError(f"config key 'pool_fraction' must be in (0, 1], got {f!r}")
    if cfg["dtype"] not in ("float32", "float64"):
        raise FlytError(f"config key 'dtype' must be float32 or float64, got {cfg['dtype']!r}")
    ref = cfg["reference"]
    if ref["kind"] not in ("embedding", "openclip"):
        raise FlytError(f"config key 'reference.kind' must be embedding or openclip, got {ref['kind']!r}")
    if ref["kind"] == "openclip":
        if isinstance(ref["pool_shards"], str):
            ref["pool_shards"] = [ref["pool_shards"]]
        if not ref["pool_shards"]:
            raise FlytError("config key 'reference.pool_shards' is required for reference.kind openclip")
        if ref["precision"] not in ("auto", "fp32", "bf16"):
            raise FlytError(f"config key 'reference.precision' must be auto, fp32 or bf16, got {ref['precision']!r}")
        if ref["chunk_size"] is not None and (not isinstance(ref["chunk_size"], int) or ref["chunk_size"] < 1):
            raise FlytError(f"config key 'reference.chunk_size' must be a positive integer or null, got {ref['chunk_size']!r}")
        if ref["device"] not in ("auto", "cpu", "cuda"):
            raise FlytError(f"config key 'reference.device' must be auto, cpu or cuda, got {ref['device']!r}")
    if cfg["reference"]["optimizer"] not in ("adamw", "sgd"):
        raise FlytError(f"config key 'reference.optimizer' must be adamw or sgd, got {cfg['reference']['optimizer']!r}")
    resolve = lambda p: str(p if Path(p).is_absolute() else (base_dir / p))  # noqa: E731
    cfg["pool"] = resolve(cfg["pool"])
    cfg["tasks"] = [resolve(t) for t in cfg["tasks"]]
    cfg["scores"] = [resolve(s) for s in cfg["scores"]]
    cfg["out"] = resolve(cfg["out"])
    if ref["kind"] == "openclip":
        ref["pool_shards"] = [resolve(p) for p in ref["pool_shards"]]
        ref["weights"] = resolve(ref["weights"]) if ref["weights"] else None
    cfg["name"] = cfg["name"] or cfg["mode"]
    return cfg


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
