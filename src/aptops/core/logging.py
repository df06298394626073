"""The library logger and progress reporting.

Library code logs through ``logging.getLogger(__name__)`` and never configures handlers; entry points
(the CLI, a component body) call :func:`configure_logging`. Long loops go through :func:`progress`:
a tqdm bar on a terminal, a log line every ``log_every`` items otherwise, nothing at all with
``APTOPS_NO_PROGRESS=1``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int | str = "INFO") -> None:
    """Send aptops logs to stderr; meant for entry points only (CLI, component bodies)."""
    root = logging.getLogger("aptops")
    root.setLevel(level if isinstance(level, int) else level.upper())
    # a host program that already prints the root logger to the console (KFP's executor does, to stdout) gets
    # our records by propagation: a handler of our own would print every line twice
    console = {id(sys.stdout), id(sys.stderr), id(sys.__stdout__), id(sys.__stderr__)}
    if any(type(h) is logging.StreamHandler and id(h.stream) in console for h in logging.getLogger().handlers):
        return
    if not any(getattr(h, "_aptops", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._aptops = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def progress_disabled() -> bool:
    """True when ``APTOPS_NO_PROGRESS`` is set to a true-ish value."""
    return os.environ.get("APTOPS_NO_PROGRESS", "").strip().lower() in {"1", "true", "yes", "on"}


def progress(
    items: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    log_every: int = 100,
    logger: logging.Logger | None = None,
) -> Iterator[T]:
    """Yield ``items`` while showing progress.

    Args:
        items: what to iterate over.
        total: the number of items, when known (for a percentage and an ETA).
        desc: a short label ("cleaning").
        unit: the unit name shown in the bar.
        log_every: without a terminal, log one line every this many items (and at the end).
        logger: where the log lines go; defaults to ``aptops.progress``.

    Yields:
        The items, unchanged.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if progress_disabled():
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True)
        return
    log = logger or logging.getLogger("aptops.progress")
    start = time.monotonic()
    count = 0
    for item in items:
        yield item
        count += 1
        if log_every and count % log_every == 0:
            _log_line(log, desc, count, total, unit, start)
    if count and (not log_every or count % log_every):
        _log_line(log, desc, count, total, unit, start)


def _log_line(log: logging.Logger, desc: str, count: int, total: int | None, unit: str, start: float) -> None:
    elapsed = max(time.monotonic() - start, 1e-9)
    rate = count / elapsed
    where = f"{count}/{total}" if total else str(count)
    log.info("%s: %s %s (%.1f %s/s)", desc or "progress", where, unit, rate, unit)
