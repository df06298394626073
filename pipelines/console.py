"""What a person sees while a pipeline runs on this machine.

``kfp.local`` prints everything to standard output: its own log lines, each task's whole stream (the executor
input as JSON, every log record twice, the Trainer's progress bars) and the outputs of each task.
:class:`RunConsole` stands in for ``sys.stdout`` and ``sys.stderr`` during a run and sorts that stream:

- every line goes to a log file: ``logs/<task>.log`` for a task's lines, ``logs/run.log`` for the rest
  (kfp's own lines, warnings about settings the local runner ignores);
- the console gets one line per task when it ends (status, duration, two or three of its numbers), a live
  line with a progress bar while it runs (on a terminal), and on failure the last lines of its log and the
  log's path.

The router reads kfp's lines by their words (``Executing task 'x'``, ``Task 'x' finished with status ...``);
``aptops run --verbose`` does without it and shows the raw stream.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_CACHED = re.compile(r"Task '?([\w.-]+)'? cache hit")
_SKIPPED = re.compile(r"Skipping (?:conditional )?task '?([\w.-]+)'?")
# the Trainer's tqdm ("  45%|####5     | 9/20 [00:05<00:06, 1.7it/s]") and aptops' own progress lines
# ("cleaning: 400/2000 rows (812.0 rows/s)")
_TQDM = re.compile(r"(\d+)/(\d+) \[")
_OURS = re.compile(r"aptops\.progress: (.*?): (\d+)/(\d+) ")
_TAIL = 8


@dataclass
class TaskRecord:
    """One task of the run as the console saw it."""

    name: str
    log: Path
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    status: str = "RUNNING"
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL))


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) or "task"


class RunConsole(io.TextIOBase):
    """A text stream that sorts ``kfp.local``'s output into per-task logs and a short console.

    Args:
        logs_dir: where ``<task>.log`` and ``run.log`` are written.
        out: the real console.
        live: redraw a progress line in place (a terminal); otherwise only whole lines are printed.
        echo: also pass every line through to ``out`` as it came (``--verbose``), instead of the task lines.
        numbers: given a task name, the few numbers worth a glance (``{"perplexity": 12.3}``) once it ended.
    """

    def __init__(self, logs_dir: Path, out: TextIO, *, live: bool, echo: bool = False,
                 numbers: Callable[[str], dict[str, float]] | None = None) -> None:
        super().__init__()
        self.logs_dir = logs_dir
        logs_dir.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.live = live and not echo
        self.echo = echo
        self.numbers = numbers or (lambda _task: {})
        self.tasks: dict[str, TaskRecord] = {}
        self._pending = ""
        self._current: TaskRecord | None = None
        self._files: dict[Path, TextIO] = {}
        self._progress = ""
        self._last_draw = 0.0

    # io.TextIOBase
    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        # universal newlines: the Trainer's bars redraw with "\r"; each redraw is a line of its own here
        self._pending += text.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        for fh in self._files.values():
            fh.flush()
        self.out.flush()

    def close_logs(self) -> None:
        """Write what is left of the stream and close the log files."""
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        self._clear_live()
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    # routing
    def _line(self, raw: str) -> None:
        if self.echo:
            self.out.write(raw + "\n")
        line = _ANSI.sub("", raw)
        if m := _START.search(line):
            self._start(m.group(1))
        target = self._current.log if self._current else self.logs_dir / "run.log"
        progress = self._progress_of(line)
        if progress is None or progress[0] == progress[1]:  # a bar's every redraw would fill the log
            self._log(target, line)
        if self._current is not None:
            if line.strip() and progress is None and not _END.search(line):
                self._current.tail.append(line.rstrip().removeprefix("    "))  # kfp indents a task's lines
            elif progress is not None:
                self._draw(progress)
        if m := _END.search(line):
            self._end(m.group(1), m.group(2))
        elif m := _CACHED.search(line):
            self._emit(f"  = {m.group(1):<26} cached")
        elif m := _SKIPPED.search(line):
            self._emit(f"  - {m.group(1):<26} skipped")

    def _log(self, path: Path, line: str) -> None:
        fh = self._files.get(path)
        if fh is None:
            fh = self._files[path] = path.open("a", encoding="utf-8")
        fh.write(line + "\n")

    def _start(self, name: str) -> None:
        record = TaskRecord(name, self.logs_dir / f"{_safe(name)}.log")
        self.tasks[name] = record
        self._current = record
        self._progress = ""
        if self.live:
            self._draw(None)

    def _end(self, name: str, status: str) -> None:
        record = self.tasks.get(name) or TaskRecord(name, self.logs_dir / f"{_safe(name)}.log")
        record.seconds = time.monotonic() - record.started
        record.status = status
        self._current = None
        self._clear_live()
        if status == "SUCCESS":
            shown = "  ".join(f"{k} {fmt_metric(k, v)}" for k, v in self.numbers(name).items())
            self._emit(f"  ✓ {name:<26} {fmt_duration(record.seconds):>7}  {shown}".rstrip())
            return
        self._emit(f"  ✗ {name:<26} {fmt_duration(record.seconds):>7}  {status.lower()}: the end of its log "
                   f"({record.log}):")
        for tail_line in record.tail:
            self._emit(f"      {tail_line}")

    # the console
    def _progress_of(self, line: str) -> tuple[int, int] | None:
        if m := _OURS.search(line):
            return int(m.group(2)), int(m.group(3))
        if (m := _TQDM.search(line)) and "|" in line:
            return int(m.group(1)), int(m.group(2))
        return None

    def _draw(self, progress: tuple[int, int] | None) -> None:
        if not self.live or self._current is None:
            return
        now = time.monotonic()
        if progress is not None and now - self._last_draw < 0.2 and progress[0] != progress[1]:
            return
        self._last_draw = now
        elapsed = fmt_duration(now - self._current.started)
        bar = ""
        if progress is not None and progress[1]:
            done, total = progress
            filled = int(20 * min(done, total) / total)
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{total}"
        self._progress = f"  … {self._current.name:<26} {elapsed:>7}  {bar}".rstrip()
        self.out.write("\r\x1b[K" + self._progress)
        self.out.flush()

    def _clear_live(self) -> None:
        if self.live and self._progress:
            self.out.write("\r\x1b[K")
            self._progress = ""

    def _emit(self, text: str) -> None:
        if self.echo:
            return
        self._clear_live()
        self.out.write(text + "\n")
        self.out.flush()
        self._log(self.logs_dir / "run.log", text)


def fmt_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def fmt_number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.3g}"


def recorded_metrics(executor_output: Path) -> dict[str, float]:
    """What a task logged to its Metrics outputs, as kfp.local recorded it in ``executor_output.json`` (output
    artifacts whose metadata is all numbers; a model's metadata with its strings is not a metric)."""
    out: dict[str, float] = {}
    for outputs in json.loads(executor_output.read_text(encoding="utf-8")).get("artifacts", {}).values():
        for artifact in outputs.get("artifacts", []):
            meta = artifact.get("metadata") or {}
            if meta and all(isinstance(v, int | float) and not isinstance(v, bool) for v in meta.values()):
                out.update(meta)
    return out


def task_metrics(run_dir: Path, task: str) -> dict[str, float]:
    """The numbers a task logged to its Metrics outputs in a local run (empty when it logged none)."""
    out: dict[str, float] = {}
    for path in sorted((run_dir / "artifacts").glob(f"*/{task}/executor_output.json")):
        try:
            out.update(recorded_metrics(path))
        except (OSError, ValueError):
            continue
    return out


def headline(metrics: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    """The first three of ``keys`` (in order) that a task logged."""
    found = [k for k in keys if k in metrics]
    return {k: float(metrics[k]) for k in found[:3]}


# the numbers worth a glance when a task ends, in the order shown
HEADLINES: dict[str, tuple[str, ...]] = {
    "process-data": ("rows", "rows_out"),
    "import-model": ("files", "bytes"),
    "train-model": ("perplexity", "train_loss", "tokens_per_second"),
    "evaluate-model": ("perplexity_base", "perplexity_trained"),
    "distill-model": ("perplexity", "eval_top1_agreement", "total_params"),
    "prune-model": ("prune_params_after", "perplexity", "prune_speedup"),
    "evaluate-compression": ("ratio_params", "ratio_generate_speedup", "ratio_llama_cpp_generate_speedup"),
    "export-gguf": ("size_bytes", "top1_agreement", "perplexity_delta"),
    "ollama-smoke-test": ("tokens_per_second", "prompts"),
    "backup-artifact": ("files_sent", "bytes_sent"),
    "backup-model": ("files_sent", "bytes_sent"),
    "prepare-multimodal-data": ("rows", "labels", "files"),
    "train-multimodal-model": ("eval_accuracy", "eval_loss", "chance_accuracy", "total_params"),
}


def fmt_metric(name: str, value: float) -> str:
    """A number as a person reads it: sizes in MB, ratios as ``0.85x``, counts with separators."""
    if name.endswith("bytes") or name.endswith("_bytes"):
        return f"{value / 1e6:,.1f} MB" if value >= 1e5 else f"{value / 1e3:,.1f} kB"
    if name.startswith("ratio_") or name.endswith("speedup"):
        return f"{value:.2f}x"
    if name.endswith("params") or name.endswith("params_after"):
        return f"{value / 1e6:,.1f}M" if value >= 1e6 else f"{int(value):,}"
    return fmt_number(value)
