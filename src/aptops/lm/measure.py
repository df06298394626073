"""Measuring models on this machine: timing code sections (alone or several taking turns) and the peak memory
of a call. Every stage that reports a speed or a memory figure measures it here.

``profile_section`` times a callable (``iterations`` runs after ``warmup``), or, given a name, is a context
manager / decorator that times each entry. On a GPU it uses CUDA events, which time the kernels rather than
the launches.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aptops.core.config import check_interval
from aptops.core.deps import require
from aptops.core.errors import ConfigError


@dataclass
class SectionTimings:
    """Timings of one named section, in seconds."""

    name: str
    times: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        if not self.times:
            return {"calls": 0}
        ordered = sorted(self.times)
        return {"calls": len(ordered), "mean_s": statistics.fmean(ordered), "min_s": ordered[0],
                "p50_s": ordered[len(ordered) // 2], "p95_s": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                "std_s": statistics.pstdev(ordered), "total_s": sum(ordered)}


class _Timer:
    """Wall time on CPU; CUDA events (synchronised at the end) when CUDA is initialised."""

    def __init__(self) -> None:
        torch = require("torch", extra="debug", feature="debugging")
        self.cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def __enter__(self) -> _Timer:
        if self.cuda:
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.elapsed = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.elapsed = time.perf_counter() - self._t0


class ProfiledSection:
    """A named section: ``with section:`` or ``@section`` records one timing per entry or call."""

    def __init__(self, name: str) -> None:
        self.timings = SectionTimings(name)

    def __enter__(self) -> ProfiledSection:
        self._timer = _Timer().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.__exit__(*exc)
        self.timings.times.append(self._timer.elapsed)

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)
        wrapper.timings = self.timings  # type: ignore[attr-defined]
        return wrapper

    def summary(self) -> dict[str, float]:
        return self.timings.summary()


def profile_section(code_section: Callable[[], Any] | str, iterations: int = 10, warmup: int = 2) -> Any:
    """Time a section of code.

    Args:
        code_section: a callable taking no arguments (run ``warmup`` + ``iterations`` times and summarised),
            or a name (returns a :class:`ProfiledSection` for ``with`` / decorator use).
        iterations: timed runs of a callable.
        warmup: untimed runs first (caches, lazy initialisation, kernel selection).

    Returns:
        For a callable, ``{"calls", "mean_s", "min_s", "p50_s", "p95_s", "std_s", "total_s"}``; for a name,
        the section object.
    """
    if isinstance(code_section, str):
        return ProfiledSection(code_section)
    if not callable(code_section):
        raise ConfigError(f"code_section must be a callable or a section name, not {type(code_section).__name__}",
                          field="code_section")
    check_interval("iterations", iterations)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup={warmup!r} must be a whole number >= 0", field="warmup", value=warmup)
    for _ in range(warmup):
        code_section()
    section = ProfiledSection(getattr(code_section, "__name__", "section"))
    for _ in range(iterations):
        with section:
            code_section()
    return section.summary()


def profile_in_turns(sections: Mapping[str, Callable[[], Any]], iterations: int = 7,
                     warmup: int = 1) -> dict[str, dict[str, float]]:
    """Time several callables taking turns, round after round: each one's :func:`profile_section` summary.

    Timed minutes apart, the same model's median forward time moved by 20% on a shared 2-core CPU (SmolLM2-135M:
    0.28 to 0.34 s from one round to the next); in turns, a slow round slows every callable in it, so their
    ratios hold. ``warmup`` untimed calls of each come first.
    """
    check_interval("iterations", iterations)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup={warmup!r} must be a whole number >= 0", field="warmup", value=warmup)
    for _ in range(warmup):
        for fn in sections.values():
            fn()
    timed = {name: ProfiledSection(name) for name in sections}
    for _ in range(iterations):
        for name, fn in sections.items():
            with timed[name]:
                fn()
    return {name: section.summary() for name, section in timed.items()}


def peak_memory(fn: Callable[[], Any], *, interval: float = 0.005) -> int:
    """The peak memory while ``fn`` runs, in bytes above what was in use before it: allocated GPU memory when
    CUDA is initialised, else the process RSS sampled every ``interval`` seconds."""
    torch = require("torch", extra="train", feature="memory measurement")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return max(int(torch.cuda.max_memory_allocated()) - before, 0)
    psutil = require("psutil", extra="debug", feature="memory measurement")
    process = psutil.Process()
    before = peak = int(process.memory_info().rss)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(interval):
            peak = max(peak, int(process.memory_info().rss))

    sampler = threading.Thread(target=sample, name="aptops-peak-memory", daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(max(peak, int(process.memory_info().rss)) - before, 0)
