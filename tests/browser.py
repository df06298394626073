"""Looking at an HTML report as a person does: Debian's chromium, headless (``scripts/setup.sh`` installs it)."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Debian chromium is installed by scripts/setup.sh")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", *args], capture_output=True, text=True, timeout=120)


def screenshot(page: Path, tmp_path: Path, size: str = "1200,2400") -> object:
    """The page as chromium paints it (a PIL image, greyscale); asserts it is not blank."""
    from PIL import Image

    shot = tmp_path / f"{page.stem}.png"
    proc = _chromium(tmp_path, f"--window-size={size}", f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    image = Image.open(shot).convert("L")
    lo, hi = image.getextrema()
    assert hi - lo > 100  # text and plots, not a blank page
    dark = sum(image.histogram()[:128]) / (image.width * image.height)
    assert dark > 0.005, f"only {dark:.4f} of the screenshot is dark: the page did not render"
    return image


def visible_text(page: Path, tmp_path: Path) -> str:
    """The text of the page after chromium has loaded it (tags dropped, entities decoded, spaces collapsed)."""
    proc = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert proc.returncode == 0 and "<body" in proc.stdout, proc.stderr[-2000:]
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", proc.stdout, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())
