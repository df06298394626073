"""The ``aptops`` command line.

``aptops stages`` lists the stages; ``aptops data clean`` runs one stage function; ``aptops run NAME
--local`` runs a pipeline on this machine through ``kfp.local``; ``aptops compile`` writes the pipelines
as KFP YAML for a cluster; ``aptops submit`` sends one to a KFP API. The orchestrator (``kfp``) is
imported only by the commands that need it.

Each stage's commands live in ``aptops.cli.<stage>``, the whole-system ones in ``aptops.cli.system``, what
they share (options, metrics, rendering) in ``aptops.cli.common``.
"""

from __future__ import annotations

import sys

from rich.markup import escape

from aptops.cli import (  # noqa: F401
    backup,
    data,
    debug,
    distill,
    eval,
    export,
    hub,
    multimodal,
    prune,
    system,
    train,
)
from aptops.cli.common import app, err
from aptops.core.errors import AptopsError, ConfigError, is_disk_full

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: turn aptops errors into one clear line and a non-zero exit."""
    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(2)
    except AptopsError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        where = f" writing {exc.filename!r}" if exc.filename else ""
        err.print(f"[red]error:[/] the disk is full{escape(where)}: what was half-written was removed; free space "
                  "there, or write to another disk (--out), and run again")
        sys.exit(1)
