"""Inputs for measuring the authors' FLYT scorer on a CPU (docs/authors-models.md, "Cost on a CPU").

Writes DIR/pool (a DataComp-shaped b32 + l14 pool, 4 shards) and DIR/flyt.pt: a checkpoint in the
authors' key layout at the released size (a ViT-B/32-sized ``clip_model.*`` base of random float32
numbers, which import-scorer drops, plus a one-layer 1024 -> 1024 -> 1 GLU head). Then time:

    python benchmarks/authors_checkpoint.py /tmp/authors --rows 200000
    /usr/bin/time -v flyt import-scorer /tmp/authors/flyt.pt --out /tmp/authors/scorer.pt
    flyt score --pool /tmp/authors/pool --pair b32 --scorer /tmp/authors/scorer.pt --out /tmp/authors/scores
    flyt sample --scores /tmp/authors/scores --column flyt --method scs --penalty 0.15 --total 200000 \\
        --out /tmp/authors/subset.npy
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.score import make_datacomp  # noqa: E402

BASE_PARAMETERS = 151_277_313  # open_clip ViT-B-32's parameter count


def authors_checkpoint(path: Path, dim: int = 1024, hidden: int = 1024, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    state, left, i = {}, BASE_PARAMETERS, 0
    while left > 0:  # the frozen base: only its size matters (import-scorer drops it)
        n = min(8_000_000, left)
        state[f"clip_model.transformer.resblocks.{i}.fake"] = torch.randn(n, generator=g)
        left, i = left - n, i + 1
    for name, shape in (("w1", (hidden, dim)), ("w2", (1, hidden)), ("w3", (hidden, dim))):
        bound = shape[1] ** -0.5
        state[f"glu_model.layers.0.{name}.weight"] = (torch.rand(*shape, generator=g) * 2 - 1) * bound
        state[f"glu_model.layers.0.{name}.bias"] = (torch.rand(shape[0], generator=g) * 2 - 1) * bound
    torch.save(state, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--rows", type=int, default=200_000)
    args = p.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    make_datacomp(args.dir / "pool", args.rows, 4)
    authors_checkpoint(args.dir / "flyt.pt")
    print(f"wrote {args.dir / 'pool'} ({args.rows} rows) and {args.dir / 'flyt.pt'}")


if __name__ == "__main__":
    main()
