"""A picture of the HTML report, taken by headless Chromium, and what the page said while loading.

Used by `kvsweep report RUN_DIR --screenshot` and by the tests that prove the page opens
cleanly. Chromium prints the page's console messages to stderr with --enable-logging; the
report has no scripts, so any console message from it is a problem. Name resolution is mapped to
nothing, so the page cannot quietly depend on the network.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_CONSOLE = re.compile(r":CONSOLE[:(](\d+)\)?\] \"(.*)\", source: (\S*)")


class NoBrowser(RuntimeError):
    pass


@dataclass
class Screenshot:
    png: Path
    width: int
    height: int  # after trimming the empty page below the content
    console: list[str] = field(default_factory=list)  # console messages of the page
    errors: list[str] = field(default_factory=list)  # page-level errors (console, failed loads)
    log: str = ""  # chromium's whole stderr, for diagnosis


def find_browser() -> str | None:
    explicit = os.environ.get("KVSWEEP_CHROMIUM")
    if explicit:
        return explicit
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def take(html: Path, out: Path, width: int = 1400, height: int = 12000, timeout_s: float = 120) -> Screenshot:
    """Screenshot `html` at `width` CSS pixels; the window is `height` tall and the picture is
    trimmed to the content (taken again twice as tall if the content reaches the bottom)."""
    browser = find_browser()
    if browser is None:
        raise NoBrowser("no Chromium found: install it (Debian: apt-get install chromium; or run "
                        "tests/install-chromium.sh), or set KVSWEEP_CHROMIUM to its path")
    html, out = Path(html).resolve(), Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        shot = _run(browser, html, out, width, height, timeout_s)
        if shot.height < height or height >= 32000:
            return shot
        height *= 2


def _run(browser: str, html: Path, out: Path, width: int, height: int, timeout_s: float) -> Screenshot:
    from PIL import Image, ImageChops

    with tempfile.TemporaryDirectory(prefix="kvsweep-chromium-") as profile:
        args = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                f"--window-size={width},{height}", f"--screenshot={out}", html.as_uri()]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        if out.exists():
            out.unlink()
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"})
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{browser} did not write {out} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    console, errors = [], []
    for line in proc.stderr.splitlines():
        m = _CONSOLE.search(line)
        if m:  # only our page is loaded: every console message is the report's
            console.append(f"{m.group(2)} ({m.group(3)}:{m.group(1)})")
        elif html.as_uri() in line and ":ERROR:" in line:
            errors.append(line)
    errors = console + errors
    image = Image.open(out).convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    box = ImageChops.difference(image, background).getbbox()
    bottom = min(image.height, (box[3] if box else 0) + 32)
    if bottom < image.height:
        image = image.crop((0, 0, image.width, bottom))
    from kvsweep.analysis.charts import palette_png

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    out.write_bytes(palette_png(buf.getvalue()))  # a page of text: a palette keeps it small
    return Screenshot(out, image.width, image.height, console, errors, proc.stderr)
