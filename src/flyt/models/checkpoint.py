"""``scorer.pt``: a trained FLYT or M-FLYT scorer with everything needed to rebuild and apply it.

Contents: ``format``, ``kind`` ("flyt" | "mflyt"), ``name`` (the score column it writes),
``model`` (constructor arguments: dims, or input columns and their standardisation statistics),
``state_dict``, and ``train`` (the resolved training config, for provenance). A scorer imported from
the authors' released checkpoints (``flyt import-scorer``) also holds ``source``: the file it came
from (path, sha256), what was dropped (the frozen CLIP base) and how the authors fed the inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flyt.errors import FlytError
from flyt.io.atomic import torch_save
from flyt.models.mixing import ScoreMixer
from flyt.models.rowwise import BLOCK_ROWS, block_map, padded
from flyt.models.scoring_head import SwiGLUScorer

FORMAT = "flyt-scorer/1"
MIXER_BLOCK_ROWS = 8 * BLOCK_ROWS  # M-FLYT: a few columns per row, so per-block overhead dominates


def scorer_payload(kind: str, name: str, model: torch.nn.Module, train_config: dict | None = None,
                   source: dict | None = None) -> dict:
    payload = {
        "format": FORMAT,
        "kind": kind,
        "name": name,
        "model": model.config(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train": train_config or {},
    }
    if source is not None:
        payload["source"] = source
    return payload


def save_scorer(path, kind: str, name: str, model: torch.nn.Module, train_config: dict | None = None,
                source: dict | None = None) -> None:
    torch_save(scorer_payload(kind, name, model, train_config, source), path)


def build_model(kind: str, model_config: dict) -> torch.nn.Module:
    if kind == "flyt":
        return SwiGLUScorer(**model_config)
    if kind == "mflyt":
        return ScoreMixer(model_config["columns"], model_config["mean"], model_config["std"],
                          bias=bool(model_config.get("bias", False)), clip=model_config.get("clip"),
                          transform=model_config.get("transform", "zscore"), knots=model_config.get("knots"),
                          levels=model_config.get("levels"))
    raise FlytError(f"unknown scorer kind {kind!r}")


class LoadedScorer:
    """A trained scorer ready to score pool rows."""

    def __init__(self, payload: dict, where: str = "scorer"):
        if not isinstance(payload, dict):
            raise FlytError(f"{where}: not a flyt scorer checkpoint (it holds a {type(payload).__name__}, not a mapping)")
        if payload.get("format") != FORMAT:
            raise FlytError(f"{where}: not a flyt scorer checkpoint (format {payload.get('format')!r})")
        for key, types in (("kind", str), ("name", str), ("model", dict), ("state_dict", dict)):
            if not isinstance(payload.get(key), types):
                found = "missing" if key not in payload else f"a {type(payload[key]).__name__}"
                raise FlytError(f"{where}: scorer checkpoint key '{key}' must be a {types.__name__}, found {found}")
        self.kind = payload["kind"]
        self.name = payload["name"]
        try:
            self.model = build_model(self.kind, payload["model"])
            self.model.load_state_dict(payload["state_dict"])
        except FlytError as exc:
            raise FlytError(f"{where}: {exc}") from None
        except (TypeError, KeyError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FlytError(f"{where}: scorer checkpoint does not fit its model ({type(exc).__name__}: {first})") from None
        self.model.eval()
        self.train_config = payload.get("train", {})
        self.source = payload.get("source") or {}  # set for an imported authors' scorer
        self.where = where

    @property
    def input_kind(self) -> str:
        return "embeddings" if self.kind == "flyt" else "scores"

    @property
    def input_columns(self) -> list[str]:
        return list(self.model.columns) if self.kind == "mflyt" else []

    @property
    def dims(self) -> tuple[int, int] | None:
        return (self.model.image_dim, self.model.text_dim) if self.kind == "flyt" else None

    @torch.no_grad()
    def score_arrays(self, image=None, text=None, scores=None) -> np.ndarray:
        """One float32 score per row. FLYT: raw image/text embeddings (normalised here);
        M-FLYT: (n, K) raw input scores in ``input_columns`` order (standardised here).

        The model runs on zero-padded blocks of a fixed row count, one torch thread per block
        (``flyt.models.rowwise``): a row's score is the same bits whatever other rows, batch size or
        thread count it is scored with. The mixer's blocks are larger: its work per row is tiny.
        """
        if self.kind == "flyt":
            if image is None or text is None:
                raise FlytError(f"{self.where}: a FLYT scorer needs image and text embeddings")
            if image.shape[1] != self.model.image_dim or text.shape[1] != self.model.text_dim:
                pair = self.source.get("pair")  # an imported authors' head names the pair it reads
                raise FlytError(
                    f"{self.where}: trained on {self.model.image_dim}+{self.model.text_dim}-d embeddings, "
                    f"got {image.shape[1]}+{text.shape[1]}-d" + (f" (it reads pair {pair}: score with --pair {pair})" if pair else "")
                )
            dtype = next(self.model.parameters()).dtype
            n, rows = len(image), BLOCK_ROWS

            def block(lo: int, hi: int) -> np.ndarray:
                out = self.model(padded(image, lo, hi, rows, dtype), padded(text, lo, hi, rows, dtype))
                return out[: hi - lo].float().numpy()
        else:
            if scores is None or scores.ndim != 2 or scores.shape[1] != len(self.input_columns):
                raise FlytError(f"{self.where}: an M-FLYT scorer needs the score columns {self.input_columns}")
            n, rows = len(scores), MIXER_BLOCK_ROWS

            def block(lo: int, hi: int) -> np.ndarray:
                return self.model(padded(scores, lo, hi, rows, torch.float64))[: hi - lo].float().numpy()

        parts = block_map(block, n, rows)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def load_scorer(path) -> LoadedScorer:
    path = Path(path)
    if not path.is_file():
        raise FlytError(f"scorer checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FlytError(f"{path}: unreadable scorer checkpoint ({type(exc).__name__})") from None
    return LoadedScorer(payload, where=str(path))
