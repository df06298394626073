"""Run a pipeline on this machine: ``kfp.local`` with ``SubprocessRunner(use_venv=False)``.

Each task runs as a subprocess of the current Python environment (no images, no cluster); outputs
land under ``runs/<pipeline>-<time>/``, metrics go to the textfile sink there unless
``APTOPS_PUSHGATEWAY_URL`` is set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

from aptops.core.errors import PipelineError
from aptops_pipelines.console import recorded_metrics

log = logging.getLogger(__name__)


def run_local(pipeline_func: Any, params: dict[str, Any], run_dir: Path, *, verbose: bool = False,
              out: TextIO | None = None, name: str | None = None) -> Any:
    """Run ``pipeline_func`` with ``params``; write ``summary.json`` (a summary per task that wrote a result) and
    ``report.html`` in ``run_dir`` and return the run (:class:`~aptops_pipelines.run_report.RunView`).

    Args:
        pipeline_func: the pipeline.
        params: its arguments.
        run_dir: the run's folder (artifacts, metrics, logs, ``summary.json``).
        verbose: show kfp.local's raw stream; otherwise each task's lines go to ``logs/<task>.log`` and
            ``out`` gets a line per task (:class:`~aptops_pipelines.console.RunConsole`).
        out: the console (default: standard output).
        name: the pipeline's short name (``lifecycle``) for the report; default: the pipeline's own name.

    Raises:
        PipelineError: a task failed (the message names it and where its logs are).
    """
    from kfp import local

    # kfp.local's SubprocessRunner swaps every "python3" in a task's command line for the interpreter path,
    # argument values included, so such a value would arrive mangled: refuse it with a way out.
    mangled = sorted(k for k, v in params.items() if isinstance(v, str) and "python3" in v)
    if mangled:
        raise PipelineError(f"parameter(s) {', '.join(mangled)} contain 'python3', which kfp.local rewrites in task "
                            "commands; use a path without it (a symlink, or a copy under ~/.cache/aptops)")

    # use_venv=False is the point here: tasks run in this environment, not in their images.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("APTOPS_METRICS_DIR", str(run_dir / "metrics"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "artifacts"))
    started = time.monotonic()
    router = _run_routed(pipeline_func, params, run_dir, out or sys.stdout, verbose=verbose)
    summary = collect_results(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    from aptops_pipelines.run_report import RunView, write_report

    view = RunView(pipeline=name or pipeline_func.name, run_dir=run_dir, tasks=summary,
                   seconds=time.monotonic() - started,
                   timings={t.name: round(t.seconds, 1) for t in router.tasks.values() if t.status == "SUCCESS"})
    write_report(view)
    return view


def _run_routed(pipeline_func: Any, params: dict[str, Any], run_dir: Path, out: TextIO, *, verbose: bool) -> Any:
    """Run with kfp.local's stream sorted into ``logs/`` and a line per task on ``out`` (or, verbose, the raw
    stream on ``out`` as well); return the router, which knows each task's status and duration."""
    from aptops_pipelines.console import HEADLINES, RunConsole, headline, task_metrics

    def _numbers(metrics: dict[str, float], keys: tuple[str, ...] | None) -> dict[str, float]:
        return headline(metrics, keys or tuple(metrics))  # a task without chosen numbers: its first three

    live = bool(getattr(out, "isatty", lambda: False)())
    router = RunConsole(run_dir / "logs", out, live=live and not verbose, echo=verbose,
                        numbers=lambda task: _numbers(task_metrics(run_dir, task), HEADLINES.get(task)))
    failure: Exception | None = None
    # kfp's own lines and its warnings about what the local runner ignores (resources, selectors) go to
    # logs/run.log: warnings and the root logger's last-resort handler write to sys.stderr when they fire
    with contextlib.redirect_stdout(router), contextlib.redirect_stderr(router):
        try:
            pipeline_func(**params)
        except Exception as exc:  # kfp.local raises RuntimeError for a failed task, other types for its own bugs
            failure = exc
        finally:
            router.close_logs()
    if failure is not None:
        failed = [t for t in router.tasks.values() if t.status not in ("SUCCESS", "RUNNING")]
        where = (f"task {failed[0].name!r} failed; its log: {failed[0].log}" if failed
                 else f"{failure}; the run's log: {run_dir / 'logs' / 'run.log'}")
        raise PipelineError(f"local run of {pipeline_func.name!r} failed: {where}; partial outputs are under "
                            f"{run_dir}") from failure
    return router


def collect_results(run_dir: Path) -> list[dict[str, Any]]:
    """Find each task's outputs under a local run folder and read their ``result.json`` markers."""
    tasks: dict[str, dict[str, Any]] = {}
    fan_out: set[str] = set()
    root = run_dir / "artifacts"
    # layout: <pipeline-run>/<task>/<output name>: only that level is read, not the artifacts' contents
    markers: dict[str, dict[str, float]] = {}
    for path in sorted(root.glob("*/*/*")):
        _, task, output = path.relative_to(root).parts
        if any(p.startswith(".") for p in (task, output)):
            continue
        if task.startswith("for-loop-"):
            fan_out.add(task)  # fan-out iterations: counted, not listed one by one
            continue
        entry = tasks.setdefault(task, {"task": task, "artifacts": {}, "metrics": {}})
        if output == "executor_output.json":
            entry["metrics"].update(recorded_metrics(path))
            continue
        entry["artifacts"][output] = str(path)
        result = path / "result.json"
        if path.is_dir() and result.is_file():
            markers.setdefault(task, {}).update(json.loads(result.read_text(encoding="utf-8")).get("metrics", {}))
    for task, metrics in markers.items():  # tasks without a Metrics output: the numbers of their markers
        if not tasks[task]["metrics"]:
            tasks[task]["metrics"] = metrics
    if fan_out:
        tasks["(fan-out)"] = {"task": "(fan-out)", "artifacts": {}, "metrics": {"iterations": float(len(fan_out))}}
    return list(tasks.values())
