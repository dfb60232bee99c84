"""The one exception type users see: its message is the single line the CLI prints."""


class FlytError(Exception):
    """Bad input or an impossible request. The message names the file, column, row or key."""


class MissingDependency(FlytError):
    """An optional extra is not installed; the message carries the exact pip line."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"this needs the optional dependency '{module}': pip install 'flyt-clip[{extra}]'"
        )


def require(module: str, extra: str):
    """Import an optional dependency or fail with the exact install line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(module, extra) from exc
