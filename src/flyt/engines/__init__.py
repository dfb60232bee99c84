"""Engines decide where per-shard functions run: ``local`` (in-process / process pool) or ``ray``.

Both offer ``map_shards(fn, items, workers=1) -> iterator of fn(item)`` in input order;
``session(engine)`` spans a command of several stages (Ray then starts at most once in it).
"""

from __future__ import annotations

import contextlib

ENGINES = ("local", "ray")


def get_map_shards(engine: str):
    """The ``map_shards`` of an engine by name; ``ray`` needs the ``flyt-clip[ray]`` extra."""
    if engine == "local":
        from flyt.engines.local import map_shards

        return map_shards
    if engine == "ray":
        from flyt.errors import require

        require("ray", "ray")
        from flyt.engines.ray import map_shards

        return map_shards
    from flyt.errors import FlytError

    raise FlytError(f"option --engine: unknown engine {engine!r} (choose from {', '.join(ENGINES)})")


def session(engine: str):
    """A context for a whole multi-stage run on ``engine``: on ``ray``, a Ray that the run's map_shards
    calls start stays up until the context ends (flyt.engines.ray.session); on ``local``, nothing."""
    if engine == "ray":
        from flyt.engines.ray import session as ray_session

        return ray_session()
    return contextlib.nullcontext()
