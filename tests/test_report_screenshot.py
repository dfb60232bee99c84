"""The demo's report.html opens in headless Chromium without errors, and its screenshot is not blank.

Uses the tiny demo run shared with test_demo.py. Chromium is Debian's package (`/usr/bin/chromium`);
CI installs it (.ci/run). Without it this test fails under CI (env CI set) and skips elsewhere.
"""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from _demo_helpers import tiny_demo_run

INSTALL = "apt-get update && apt-get install -y chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]
WINDOW = (1200, 2000)
FLYT_RED = (214, 39, 40)  # the FLYT / M-FLYT bars of the accuracy plot (#d62728)

# Appended to a copy of the report: after load, records on <body> how many images there are, how
# many failed to decode (a broken data: URI logs nothing to the console), and horizontal overflow.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images), b = document.body;
  const broken = i => !i.complete || i.naturalWidth === 0;
  b.setAttribute('data-images', imgs.length);
  b.setAttribute('data-broken', imgs.filter(broken).length);
  b.setAttribute('data-thumbs', document.querySelectorAll('.gallery img').length);
  b.setAttribute('data-overflow', document.documentElement.scrollWidth > window.innerWidth ? 1 : 0);
});
</script>"""


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        message = f"headless Chromium not found; install it (as root): {INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(chromium, tmp_path, url, *extra) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh one per run
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *extra, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    # Page console output (JS errors, console.error...) is logged as "...:CONSOLE..."; the report has
    # no scripts of its own, so any such line is a problem (dbus/GPU noise is not CONSOLE).
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, "console messages:\n" + "\n".join(console)
    return proc


def _probe(chromium, tmp_path, html: str) -> dict:
    page = tmp_path / f"probe-{len(list(tmp_path.glob('probe-*')))}.html"
    page.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = _run(chromium, tmp_path, page.as_uri(), "--dump-dom").stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body and "data-images" in body.group(1), f"probe did not run; DOM starts: {dom[:500]}"
    return {k: int(v) for k, v in re.findall(r'data-(\w+)="(\d+)"', body.group(1))}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    _, out, _, _ = tiny_demo_run(tmp_path_factory)
    return out / "report.html"


def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    chromium = _chromium()
    shot = tmp_path / "report.png"
    _run(chromium, tmp_path, report.as_uri(), f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 0
    img = Image.open(shot).convert("RGB")
    assert img.size == WINDOW
    px = np.asarray(img).astype(int)
    colours = img.getcolors(maxcolors=1 << 24)
    assert len(colours) > 100, f"only {len(colours)} colours: blank or unstyled page"
    non_white = (px.min(axis=2) < 245).mean()
    assert non_white > 0.03, f"only {non_white:.1%} of the screenshot is not white"
    red = (np.abs(px - FLYT_RED).max(axis=2) < 12).sum()
    assert red > 2000, f"the accuracy plot's FLYT bars are not visible ({red} red pixels)"

    # Every image (plots and thumbnails) decodes in the browser, and nothing overflows the page.
    got = _probe(chromium, tmp_path, report.read_text())
    assert got["broken"] == 0 and got["overflow"] == 0, got
    # 24 top/bottom cards plus the near-duplicate groups' thumbnails (at most 8 groups x 4)
    assert 24 <= got["thumbs"] <= 24 + 32 and got["images"] >= got["thumbs"] + 8, got


def test_probe_detects_a_broken_image(report, tmp_path):
    """The decoding check can fail: corrupt one embedded PNG and it is counted as broken."""
    chromium = _chromium()
    html = report.read_text().replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1)
    got = _probe(chromium, tmp_path, html)
    assert got["broken"] == 1, got
