"""`python _progress_demo_main.py ROOT`: the tiny demo (tests/_demo_helpers.py) from an empty output, its
benchmark built from a fresh cache, as `flyt demo` runs it (used by test_progress.py under a pseudo-terminal).

The cache holds the tiny rendered assets and every preparation marker, so nothing is fetched; digits'
marker is removed so the asset stage really renders (scikit-learn's digits need no download; the first
DIGITS of them, to keep it short). The fake encoder stands in for the offline towers (patched where the
demo looks it up).
"""

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
DIGITS = 200


def main() -> None:
    import torch

    import flyt.encoders
    from _demo_helpers import tiny_config, write_tiny_assets
    from _encoders_helpers import FakeEncoder
    from flyt.bench import assets
    from flyt.io.atomic import write_json
    from flyt.pipeline.demo import run_demo

    torch.set_num_threads(1)  # as tests/conftest.py: tiny problems, a shared machine
    flyt.encoders.get_encoder = lambda name="offline", **options: FakeEncoder()
    root = Path(sys.argv[1])
    cache = root / "cache"
    write_tiny_assets(cache)
    for step in assets.pending_steps(cache):  # whatever the helpers do not mark: never fetch in a test
        write_json({"seconds": 0.0}, assets._marker(cache, step))
    assets._marker(cache, assets.render_step("digits")).unlink()
    listing = assets.SOURCES["digits"]
    assets.SOURCES["digits"] = lambda root, cache: tuple(part[:DIGITS] for part in listing(root, cache))
    run_demo(replace(tiny_config(root / "out", None), cache=str(cache)))


if __name__ == "__main__":  # the asset renderer's worker processes start by spawn and import this file
    main()
