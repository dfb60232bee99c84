"""``flyt.import_scorer``: the authors' released FLYT / M-FLYT checkpoint -> a flyt ``scorer.pt``.

The released FLYT scorer is a frozen OpenAI ViT-B/32 plus a SwiGLU head over the concatenated,
L2-normalised image and text embeddings (layout: ``flyt.models.authors``). DataComp's metadata
already holds those embeddings (``b32_img``, ``b32_txt`` in each shard's npz: the ViT-B/32 towers'
normalised outputs), so only the head is kept: ``flyt score --pair b32`` applies it to a whole pool
on a CPU. An M-FLYT mixer is kept with the user's names for its K inputs and scores them raw, with
its bias, as the authors did. The scorer.pt records where it came from (``source``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from flyt.api._config import make_config
from flyt.errors import FlytError
from flyt.io.datacomp import PAIRS
from flyt.io.subsets import check_output_file
from flyt.models.authors import flyt_head, flyt_shape, mflyt_mixer, read_authors_checkpoint, sha256_file
from flyt.models.checkpoint import save_scorer

__all__ = ["ImportScorerConfig", "ImportScorerResult", "import_scorer"]

REPOSITORY = "the authors' repository formll/FLYT (flyt/factory.py)"
FLYT_INPUTS = ("image and text embeddings of pair {pair} ({dim}-d each; DataComp npz {img}, {txt}), "
               "L2-normalised, concatenated image first")
MFLYT_INPUTS = "raw (unstandardised) input scores, in the authors' order, plus the bias: as the authors scored"


@dataclass
class ImportScorerConfig:
    """What ``flyt import-scorer`` takes; every field is the CLI flag of the same name."""

    checkpoint: str | Path  # the authors' flyt.pt / mflyt.pt (bare state dict or {"state_dict": ...})
    out: str | Path  # the scorer.pt to write
    pair: str = "b32"  # the embedding pair the FLYT head reads (its input width must be 2 x the pair's)
    columns: list[str] | None = None  # M-FLYT: its K input score columns, in the authors' order
    name: str | None = None  # the score column written by flyt score (default flyt / mflyt)

    def validate(self) -> "ImportScorerConfig":
        if self.pair not in PAIRS:
            raise FlytError(f"option --pair: unknown pair {self.pair!r} (choose from {', '.join(PAIRS)})")
        if self.columns is not None:
            if isinstance(self.columns, str):
                self.columns = [self.columns]
            self.columns = [str(c) for c in self.columns]
            bad = next((c for c in self.columns if not c.strip() or c == "uid"), None)
            if bad is not None:
                raise FlytError(f"option --columns: {bad!r} is not a score column name")
            seen = set()
            for c in self.columns:
                if c in seen:
                    raise FlytError(f"option --columns: column '{c}' is named twice")
                seen.add(c)
        if self.name is not None and (not str(self.name).strip() or self.name == "uid"):
            raise FlytError(f"option --name: {self.name!r} is not a score column name")
        return self


@dataclass
class ImportScorerResult:
    """What was imported: the scorer.pt written and what it holds."""

    out: Path
    kind: str  # flyt | mflyt
    name: str  # the score column it writes
    description: str  # "FLYT head, 1 layer(s), 1024 -> 1024 -> 1" / "M-FLYT mixer over 12 input scores"
    source: dict = field(default_factory=dict)  # as stored in the scorer.pt

    def line(self) -> str:
        dropped = self.source.get("dropped") or {}
        gone = f"; dropped {dropped['tensors']} clip_model.* tensors (the frozen base)" if dropped.get("tensors") else ""
        inputs = f", pair {self.source['pair']}" if self.kind == "flyt" else f" ({', '.join(self.source['columns'])})"
        return f"{self.out}: {self.description}{inputs}, column '{self.name}'{gone}"


def import_scorer(config: ImportScorerConfig | dict | None = None, **fields) -> ImportScorerResult:
    """Convert the authors' checkpoint to a flyt scorer.pt.

    >>> import flyt
    >>> r = flyt.import_scorer(checkpoint="flyt.pt", out="authors_flyt.pt", pair="b32")  # doctest: +SKIP
    >>> flyt.score(pool="datacomp/metadata", out="scores", scorers=[str(r.out)], pair="b32")  # doctest: +SKIP
    """
    cfg = make_config(ImportScorerConfig, config, fields, "flyt.import_scorer")
    src, out = Path(cfg.checkpoint), Path(cfg.out)
    check_output_file(out, "--out")
    if out.exists() and src.exists() and os.path.samefile(out, src):
        raise FlytError(f"--out {out} is the checkpoint being imported")
    ckpt = read_authors_checkpoint(src)
    source = {
        "from": REPOSITORY,
        "path": str(src.resolve()),
        "sha256": sha256_file(src),
        "bytes": src.stat().st_size,
        "wrapper": ckpt.wrapper,
        "ignored": ckpt.ignored,
        "prefix_stripped": ckpt.prefix,
        "dropped": ckpt.dropped,
        "dtype": ckpt.dtype,
    }
    if ckpt.kind == "flyt":
        if cfg.columns:
            raise FlytError(f"option --columns is for an M-FLYT checkpoint; {src} is a {ckpt.describe()}")
        img, txt, dim = PAIRS[cfg.pair]
        model = flyt_head(ckpt, dim, cfg.pair)
        n, d, h = flyt_shape(ckpt)
        source.update(layout="ScoringModel", pair=cfg.pair, layers=n, hidden=h, activation="silu",
                      inputs=FLYT_INPUTS.format(pair=cfg.pair, dim=dim, img=img, txt=txt))
        name = cfg.name or "flyt"
    else:
        model = mflyt_mixer(ckpt, cfg.columns)
        source.update(layout="MixingModel", columns=list(cfg.columns), raw_inputs=True, inputs=MFLYT_INPUTS)
        name = cfg.name or "mflyt"
    save_scorer(out, ckpt.kind, name, model, train_config={}, source=source)
    return ImportScorerResult(out, ckpt.kind, name, ckpt.describe(), source)
