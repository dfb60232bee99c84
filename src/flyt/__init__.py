"""flyt: Filter Like You Test. Learned data filtering for CLIP pretraining.

The public API (docs/api.md), one call per command, each taking a typed config (a dataclass, a
mapping, or keyword fields) and returning a result object; bad input raises ``flyt.FlytError`` with
the one line the CLI prints::

    import flyt
    run = flyt.train("flyt.yaml")                                     # FLYT / M-FLYT -> scorer.pt
    flyt.score(pool="data/pool", out="scores/flyt", scorers=[str(run.scorer)])
    flyt.sample(scores="scores/flyt", column="flyt", method="scs", penalty=0.15,
                total=128_000_000, out="subset.npy")

Layers (imports point down only; docs/architecture.md):
cli > api > pipeline > bench > training > scorers > encoders > models > sampling > engines > io > errors.
"""

from flyt.errors import FlytError, MissingDependency

__version__ = "0.1.0"

# name -> module of flyt.api that defines it; imported on first use (torch loads only when needed)
_API = {
    "score": "score", "ScoreConfig": "score", "ScoreResult": "score",
    "sample": "sample", "SampleConfig": "sample", "SampleResult": "sample",
    "train": "train", "TrainConfig": "train", "TrainResult": "train",
    "embed": "embed", "EmbedConfig": "embed", "EmbedResult": "embed",
    "demo": "demo", "DemoConfig": "demo", "DemoResult": "demo",
    "reshard": "reshard", "ReshardConfig": "reshard", "ReshardResult": "reshard", "subset_stream": "reshard",
    "import_scorer": "import_scorer", "ImportScorerConfig": "import_scorer", "ImportScorerResult": "import_scorer",
}

__all__ = ["FlytError", "MissingDependency", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(f"flyt.api.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flyt' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
