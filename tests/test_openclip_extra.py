"""Without the openclip extra, open_clip features fail with the exact pip line (exit 2 on the CLI)."""

import sys

import pytest

from _openclip_helpers import make_pool_wds
from flyt.cli.main import main
from flyt.encoders import get_encoder
from flyt.encoders.openclip import parse_spec
from flyt.errors import FlytError, MissingDependency


def test_parse_spec():
    assert parse_spec("openclip:ViT-B-32") == ("ViT-B-32", None)
    assert parse_spec("openclip:ViT-B-32:/w/b32.pt") == ("ViT-B-32", "/w/b32.pt")
    assert parse_spec("openclip:ViT-B-32:C:/w.pt") == ("ViT-B-32", "C:/w.pt")
    with pytest.raises(FlytError, match="openclip:MODEL"):
        parse_spec("openclip:")


def test_missing_extra_names_the_pip_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if the extra were not installed
    with pytest.raises(MissingDependency, match=r"pip install 'flyt-clip\[openclip\]'"):
        get_encoder("openclip:ViT-B-32")
    make_pool_wds(tmp_path / "w", n=3, shards=1)
    assert main(["embed", "pool", "--input", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                 "--encoder", "openclip:ViT-B-32"]) == 2
    assert "flyt-clip[openclip]" in capsys.readouterr().err
