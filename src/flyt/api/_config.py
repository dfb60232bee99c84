"""How every API entry point takes its config: a typed dataclass, a mapping, or keyword fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeVar

from flyt.errors import FlytError

C = TypeVar("C")


def make_config(cls: type[C], config, fields: dict, what: str) -> C:
    """``config`` (an instance of ``cls``, a mapping, or None) updated with keyword ``fields``, validated.

    Unknown keys fail with one line naming them, as the CLI and YAML configs do.
    """
    if config is None:
        config = {}
    if isinstance(config, cls):
        config = dataclasses.replace(config, **fields) if fields else config
    elif isinstance(config, Mapping):
        merged = {**config, **fields}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in merged if k not in known]
        if unknown:
            raise FlytError(f"{what}: unknown option '{unknown[0]}' (known: {', '.join(sorted(known))})")
        config = cls(**merged)
    else:
        raise FlytError(f"{what}: config must be a {cls.__name__} or a mapping, got {type(config).__name__}")
    validate = getattr(config, "validate", None)
    return validate() if validate else config
