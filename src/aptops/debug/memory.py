"""Memory over time: GPU memory through ``torch.cuda`` when a GPU is in use, process RSS through psutil
otherwise, sampled by a background thread; leak detection from the timeline and from object counts.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.config import check_range
from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.debug.findings import Finding

log = logging.getLogger(__name__)
MB = 1024 * 1024


def _object_counts(exclude: AbstractSet[int] = frozenset()) -> Counter[str]:
    """Live objects by type name, leaving out the objects whose ids are in ``exclude``."""
    return Counter(type(o).__name__ for o in gc.get_objects() if id(o) not in exclude)


def steady_growth(snapshots: Sequence[Counter[str]], *, share: float = 0.75, top: int = 10) -> list[tuple[str, int]]:
    """Types whose count rose in at least ``share`` of the intervals between snapshots, by total growth."""
    if len(snapshots) < 2:
        return []
    total = snapshots[-1] - snapshots[0]
    intervals = len(snapshots) - 1
    steady = {t: n for t, n in total.items()
              if sum(b[t] > a[t] for a, b in itertools.pairwise(snapshots)) >= share * intervals}
    return sorted(steady.items(), key=lambda kv: -kv[1])[:top]


@dataclass
class MemoryTracker:
    """Samples memory every ``interval`` seconds between :meth:`start` and :meth:`stop` (or as a context).

    Attributes:
        device: ``cpu`` or a CUDA device (``cuda``, ``cuda:1``).
        history: ``(seconds since start, bytes)`` samples: allocated GPU memory, or the process RSS.
        peak: the highest sample; on a GPU also ``torch.cuda.max_memory_allocated``.
        object_growth: object types whose live count grew steadily (in most intervals between object
            snapshots, taken every ``objects_every`` samples), by growth: a leak grows all along, while a
            one-off burst (an import, a cache filled once) does not count.
        allocation_growth: with ``trace_allocations``, the source lines whose allocations grew most.
        plot: write a PNG of the timeline here on :meth:`stop`.
    """

    device: str = "cpu"
    interval: float = 0.5
    track_objects: bool = True
    objects_every: int = 5
    trace_allocations: bool = False
    plot: str | Path | None = None
    history: list[tuple[float, int]] = field(default_factory=list)
    peak: int = 0
    object_growth: list[tuple[str, int]] = field(default_factory=list)
    allocation_growth: list[tuple[str, int]] = field(default_factory=list)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _t0: float = field(default=0.0, init=False, repr=False)
    _objects: list[Counter[str]] = field(default_factory=list, init=False, repr=False)
    _samples: int = field(default=0, init=False, repr=False)
    _snapshot: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_range("interval", self.interval, min_value=0.0, min_inclusive=False)
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device={self.device!r}: memory is tracked on 'cpu' or a CUDA device ('cuda', 'cuda:0')",
                              field="device", value=self.device)
        if self.device.startswith("cuda"):
            torch = require("torch", extra="debug", feature="GPU memory tracking")
            if not torch.cuda.is_available():
                raise ConfigError(f"device={self.device!r} but no CUDA GPU is visible; use device='cpu'",
                                  field="device", value=self.device)

    def sample(self) -> int:
        """Take one sample now and return it (bytes)."""
        if self.device.startswith("cuda"):
            torch = require("torch", extra="debug", feature="debugging")
            value = int(torch.cuda.memory_allocated(self.device))
            self.peak = max(self.peak, int(torch.cuda.max_memory_allocated(self.device)))
        else:
            psutil = require("psutil", extra="debug", feature="process memory tracking")
            value = int(psutil.Process().memory_info().rss)
        self.history.append((time.monotonic() - self._t0, value))
        self.peak = max(self.peak, value)
        return value

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
                self._samples += 1
                if self.track_objects and self._samples % self.objects_every == 0:
                    self._snapshot_objects()
            except Exception:  # a failing sample must never take the training down
                log.exception("memory sample failed; tracking stops")
                return

    def _snapshot_objects(self) -> None:
        # the tracker's own samples (a tuple each) and snapshots grow too: not the training's leak
        own = {id(sample) for sample in self.history} | {id(snap) for snap in self._objects}
        self._objects.append(_object_counts(own))
        if len(self._objects) > 40:  # keep the first, thin the rest: bounded memory on long runs
            self._objects = self._objects[:1] + self._objects[2::2]

    def start(self) -> MemoryTracker:
        if self._thread is not None:
            return self
        self._t0 = time.monotonic()
        self._stop.clear()
        self._objects = []
        if self.track_objects:
            self._snapshot_objects()
        if self.trace_allocations:
            if not tracemalloc.is_tracing():
                tracemalloc.start(5)
            self._snapshot = tracemalloc.take_snapshot()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="aptops-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemoryTracker:
        if self._thread is None:
            return self
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.sample()
        if self.track_objects:
            self._snapshot_objects()
            self.object_growth = steady_growth(self._objects)
        if self._snapshot is not None:
            stats = tracemalloc.take_snapshot().compare_to(self._snapshot, "lineno")
            self.allocation_growth = [(str(s.traceback[0]), s.size_diff) for s in stats[:10] if s.size_diff > 0]
            self._snapshot = None
        if self.plot:
            from aptops.debug.visualize import plot_memory

            plot_memory(self, self.plot)
        return self

    def __enter__(self) -> MemoryTracker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "interval": self.interval, "peak_bytes": self.peak,
                "history": self.history, "object_growth": self.object_growth,
                "allocation_growth": self.allocation_growth}


def track_memory(device: str | None = None, interval: float = 0.5, plot: str | Path | None = None, *,
                 track_objects: bool = True, trace_allocations: bool = False) -> MemoryTracker:
    """A started :class:`MemoryTracker`; use it as a context manager or call ``stop()``.

    Args:
        device: ``cpu`` or ``cuda[:n]``; default: the current CUDA device when one is available, else cpu.
        interval: seconds between samples.
        plot: write a PNG of the timeline here when the tracker stops.
        track_objects: count live objects by type at start and stop (what grows).
        trace_allocations: also trace allocations with ``tracemalloc`` (slower; names the source lines).
    """
    if device is None:
        torch = require("torch", extra="debug", feature="memory tracking")
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    return MemoryTracker(device=device, interval=interval, plot=plot, track_objects=track_objects,
                         trace_allocations=trace_allocations).start()


@dataclass(frozen=True)
class LeakReport:
    """What :func:`detect_memory_leaks` concluded."""

    leaking: bool
    growth_bytes: float
    growth_per_s: float
    r_squared: float
    growing_types: list[tuple[str, int]]
    findings: list[Finding]

    def to_dict(self) -> dict[str, Any]:
        return {"leaking": self.leaking, "growth_bytes": self.growth_bytes, "growth_per_s": self.growth_per_s,
                "r_squared": self.r_squared, "growing_types": self.growing_types,
                "findings": [f.to_dict() for f in self.findings]}


def _series(memory_history: Any) -> tuple[list[float], list[float]]:
    hist = memory_history.history if isinstance(memory_history, MemoryTracker) else memory_history
    pts: list[tuple[float, float]] = []
    for i, item in enumerate(hist):
        if isinstance(item, Sequence) and len(item) == 2:
            pts.append((float(item[0]), float(item[1])))
        else:
            pts.append((float(i), float(item)))
    return [p[0] for p in pts], [p[1] for p in pts]


def detect_memory_leaks(memory_history: Any, leak_threshold: float = 50 * MB, *, min_r_squared: float = 0.8,
                        min_samples: int = 5, warmup: float = 0.0) -> LeakReport:
    """Sustained growth: a straight-line fit that rises by more than ``leak_threshold`` bytes and explains
    most of the variation (``r²``), so a one-off spike or a warm-up plateau is not called a leak.

    Args:
        memory_history: a :class:`MemoryTracker`, ``(t, bytes)`` pairs, or plain byte samples.
        leak_threshold: the rise over the window (bytes) that counts as a leak.
        min_r_squared: how straight the growth must be.
        min_samples: fewer samples say nothing.
        warmup: the leading share of the history to ignore (loading a model, allocating optimizer state
            and filling caches is growth too, but not a leak).
    """
    check_range("leak_threshold", leak_threshold, min_value=0.0, min_inclusive=False)
    check_range("warmup", warmup, min_value=0.0, max_value=0.9)
    ts, ys = _series(memory_history)
    skip = int(len(ys) * warmup)
    ts, ys = ts[skip:], ys[skip:]
    types = memory_history.object_growth if isinstance(memory_history, MemoryTracker) else []
    sites = memory_history.allocation_growth if isinstance(memory_history, MemoryTracker) else []
    if len(ys) < min_samples:
        return LeakReport(False, 0.0, 0.0, 0.0, types, [])
    n = len(ys)
    mt, my = sum(ts) / n, sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    sxy = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (my + slope * (t - mt))) ** 2 for t, y in zip(ts, ys, strict=True))
    r2 = 1 - ss_res / ss_tot if ss_tot else 0.0
    growth = slope * (ts[-1] - ts[0])
    leaking = growth > leak_threshold and r2 >= min_r_squared
    findings = []
    if leaking:
        what = ", ".join(f"{name} (+{count})" for name, count in types[:5]) or "no Python object type stood out"
        where = "; ".join(f"{site} (+{size / MB:.1f} MB)" for site, size in sites[:3])
        findings.append(Finding(
            "memory_leak", "critical",
            f"memory grew steadily by {growth / MB:.1f} MB ({slope / MB:.2f} MB/s, r²={r2:.2f}); growing object "
            f"types: {what}" + (f"; allocations grew at {where}" if where else ""),
            "look for lists, dicts or caches that keep references across steps (losses appended as tensors "
            "instead of .item(), outputs kept for logging, hooks never removed); call .detach().cpu() on what "
            "you keep, and run with trace_allocations=True to see the source lines",
            where=types[0][0] if types else "", value=growth))
    return LeakReport(leaking, growth, slope, r2, types, findings)


def gpu_snapshot() -> list[dict[str, Any]]:
    """Utilisation and memory of every NVIDIA GPU through NVML (``nvidia-ml-py``); empty without a GPU."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []  # no driver: no GPU to report
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                        "utilization_pct": float(util.gpu), "memory_used_bytes": int(mem.used),
                        "memory_total_bytes": int(mem.total)})
        return out
    finally:
        pynvml.nvmlShutdown()
