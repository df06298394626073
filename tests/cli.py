"""Running the ``aptops`` command as a user does: the installed console script, in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

APTOPS = shutil.which("aptops", path=str(Path(sys.executable).parent)) or "aptops"


def aptops(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``aptops ARGS`` with the test environment (plus ``env``), a wide terminal and a 10-minute limit."""
    return subprocess.run(
        [APTOPS, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=600,
    )
