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


def aptops_all(*commands: tuple[str, ...], cwd: Path | None = None, env: dict | None = None,
               workers: int = 3) -> list[subprocess.CompletedProcess]:
    """``aptops`` once per command (each its own process, as :func:`aptops`), ``workers`` at a time, results in order:
    most of a refused run is the interpreter starting, which two cores do side by side. Give each its own --out."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda args: aptops(*args, cwd=cwd, env=env), commands))
