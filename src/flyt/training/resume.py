"""``flyt train --resume``: continue a run only with the run's own config and a checkpoint that fits it.

A resumed run must reproduce the uninterrupted one, so its config must equal the run's config.yaml in
every key but ``steps`` (training longer or shorter is allowed; config.yaml then records the new
count) and ``out`` (the run directory is found by it; a moved run keeps working). The checkpoint
``checkpoints/latest.pt`` is read with ``weights_only`` (tensors and plain containers, no code) and
checked against this run's models before anything in the run directory changes: a truncated,
foreign or other-architecture file is one line naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

from flyt.errors import FlytError
from flyt.training.config import TrainConfig, config_keys

CHECKPOINT_KEYS = ("step", "scorer", "scorer_opt", "reference", "reference_state", "psi", "psi_opt")
FREE_KEYS = ("steps", "out")  # the keys a resume may change


def first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_difference(old: Mapping, new: Mapping) -> tuple[str, object, object] | None:
    """The first key (in config order) whose value differs, with (old, new); keys ``old`` lacks
    (a run started by an older flyt) and FREE_KEYS are not compared."""
    for key in config_keys():
        if key in FREE_KEYS:
            continue
        o, n, present = old, new, True
        for part in key.split("."):
            if not isinstance(o, Mapping) or part not in o:
                present = False
                break
            o, n = o[part], n[part]
        if present and o != n:
            return key, o, n
    return None


def read_run_config(path: Path) -> Mapping | None:
    """The run's config.yaml as a mapping; None when the file is gone (the checkpoint's copy is used)."""
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FlytError(f"{path}: cannot read the run's config to check --resume against ({first_line(exc)})") from None
    if not isinstance(data, Mapping):
        raise FlytError(f"{path}: not a flyt run config (a {type(data).__name__}, expected a mapping of keys)")
    return data


def read_checkpoint(latest: Path, device) -> dict:
    """checkpoints/latest.pt, checked for shape: a mapping with every key and a step count."""
    try:
        ckpt = torch.load(latest, map_location=device, weights_only=True)
    except Exception as exc:  # torch reports a truncated or foreign file in many ways
        raise FlytError(f"{latest}: not a readable training checkpoint "
                        f"(truncated, corrupt or not a torch file: {first_line(exc)})") from None
    if not isinstance(ckpt, dict):
        raise FlytError(f"{latest}: not a flyt training checkpoint (a {type(ckpt).__name__}, expected a mapping)")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise FlytError(f"{latest}: not a flyt training checkpoint (no {', '.join(missing)})")
    step = ckpt["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise FlytError(f"{latest}: 'step' must be a non-negative integer, got {step!r}")
    return ckpt


def check_resume(cfg: TrainConfig, run_dir: Path, latest: Path, device) -> dict:
    """The checkpoint to resume from, once the config is the run's and the checkpoint is this run's."""
    ckpt = read_checkpoint(latest, device)
    stored = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else None
    saved = read_run_config(run_dir / "config.yaml")
    new = cfg.to_dict()
    if saved is not None and (diff := config_difference(saved, new)):
        key, old, value = diff
        raise FlytError(f"--resume: config key '{key}' is {value!r} but the run in {run_dir} was started with {old!r}")
    if stored is not None and (diff := config_difference(stored, new)):
        key, old, value = diff
        raise FlytError(f"{latest}: written by a run with config key '{key}' {old!r}, not this run's {value!r}")
    if ckpt["step"] > cfg.steps:
        raise FlytError(f"--resume: config key 'steps' is {cfg.steps} but the checkpoint {latest} is at step {ckpt['step']}")
    return ckpt


def _same_tensors(what: str, got, want: Mapping) -> None:
    if not isinstance(got, Mapping) or set(got) != set(want):
        names = sorted(got) if isinstance(got, Mapping) else type(got).__name__
        raise ValueError(f"{what} holds {names}, expected {sorted(want)}")
    for k, w in want.items():
        g = got[k]
        if not isinstance(g, torch.Tensor) or g.shape != w.shape or g.dtype != w.dtype:
            shape = (tuple(g.shape), g.dtype) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"{what}[{k!r}] is {shape}, expected {(tuple(w.shape), w.dtype)}")


def restore(ckpt: dict, latest: Path, scorer, scorer_opt, params: dict, psi, psi_opt) -> tuple[dict, dict]:
    """Load the checkpoint into this run's scorer, optimizers and psi; returns (params, ref_state).
    Anything that does not fit (another architecture, dimension or dtype) is one line naming the file."""
    try:
        _same_tensors("reference", ckpt["reference"], params)
        state = ckpt["reference_state"]
        if not isinstance(state, Mapping) or not isinstance(state.get("step"), int):
            raise ValueError("reference_state must hold 'step', 'm' and 'v'")
        _same_tensors("reference_state m", state.get("m"), params)
        _same_tensors("reference_state v", state.get("v"), params)
        scorer.load_state_dict(ckpt["scorer"])
        scorer_opt.load_state_dict(ckpt["scorer_opt"])
        for p in scorer.parameters():  # torch does not check the moments' shapes until the next step
            for name, value in scorer_opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise ValueError(f"scorer optimizer state {name} is {tuple(value.shape)}, expected {tuple(p.shape)}")
        saved_psi = ckpt["psi"]
        if not isinstance(saved_psi, torch.Tensor) or saved_psi.shape != psi.shape:
            raise ValueError(f"psi must be a scalar tensor, got {saved_psi!r}")
        with torch.no_grad():
            psi.copy_(saved_psi)
        psi_opt.load_state_dict(ckpt["psi_opt"])
    except Exception as exc:  # every mismatch torch can report is this file's fault
        raise FlytError(f"{latest}: does not fit this run's scorer and reference ({first_line(exc)})") from None
    return dict(ckpt["reference"]), {"step": state["step"], "m": dict(state["m"]), "v": dict(state["v"])}
