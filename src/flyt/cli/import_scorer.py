"""``flyt import-scorer``: the authors' released FLYT / M-FLYT checkpoint -> a flyt scorer.pt."""

from __future__ import annotations

import argparse

HELP = "convert the paper authors' released flyt.pt / mflyt.pt into a scorer.pt for flyt score"

DESCRIPTION = (
    "Read a scoring model released with the FLYT paper (the authors' repository formll/FLYT; the files "
    "scoring_models/flyt.pt and mflyt.pt of the authors' model repository formll/FLYT-models, or a training "
    "checkpoint scoring_epoch_N.pt: a bare state dict or one under 'state_dict') and write a flyt "
    "scorer.pt that 'flyt score' applies on a CPU. "
    "FLYT (keys glu_model.layers.<i>.w1|w2|w3.weight|bias and clip_model.*): the frozen CLIP base "
    "(clip_model.*) is dropped and recorded; the number of layers and the hidden width are read from "
    "the shapes. The head reads the concatenation [image ; text] of the base's L2-normalised "
    "embeddings, image first. The released base carries OpenAI's ViT-B/32 weights, whose normalised image "
    "and text embeddings DataComp ships in every metadata shard (npz keys b32_img, b32_txt; the doc notes "
    "how the authors' base may differ slightly): score with "
    "'flyt score --pair b32' and no images or GPU are needed. The head's input width must be 2 x the "
    "pair's dimension (2 x 512 for b32). "
    "M-FLYT (keys layers.0.weight of shape (1, K), layers.0.bias): name its K input score columns in "
    "the authors' order with --columns (columns of the pool's parquet, e.g. clip_b32_similarity_score, "
    "or of score directories given to 'flyt score --scores'); the authors fed these raw, unstandardised, "
    "and the scorer.pt "
    "does the same (with their bias). The scorer.pt records the source file (path, sha256), what was "
    "dropped and how inputs are fed. See docs/authors-models.md."
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("import-scorer", help=HELP, description=DESCRIPTION)
    p.add_argument("checkpoint", metavar="AUTHORS.pt", help="the authors' flyt.pt or mflyt.pt")
    p.add_argument("--out", required=True, metavar="SCORER.pt", help="the flyt scorer.pt to write (replaced if it exists)")
    p.add_argument("--pair", choices=["b32", "l14"], default="b32",
                   help="FLYT: the DataComp embedding pair the head reads (default b32: the released head's "
                        "OpenAI ViT-B/32, 512-d)")
    p.add_argument("--columns", nargs="+", default=None, metavar="COLUMN",
                   help="M-FLYT: its K input score columns, in the authors' order (K = layers.0.weight's width)")
    p.add_argument("--name", default=None, metavar="COLUMN",
                   help="the score column flyt score writes (default flyt, or mflyt for an M-FLYT checkpoint)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flyt.api.import_scorer import ImportScorerConfig, import_scorer

    result = import_scorer(ImportScorerConfig(checkpoint=args.checkpoint, out=args.out, pair=args.pair,
                                              columns=args.columns, name=args.name))
    print(f"flyt import-scorer: {result.line()}")
    return 0
