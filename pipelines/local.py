"""Run a pipeline on this machine: ``kfp.local`` with ``SubprocessRunner(use_venv=False)``.

Each task runs as a subprocess of the current Python environment (no images, no cluster); outputs
land under ``runs/<pipeline>-<time>/``, metrics go to the textfile sink there unless
``APTOPS_PUSHGATEWAY_URL`` is set.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from aptops.core.errors import PipelineError

log = logging.getLogger(__name__)


def run_local(pipeline_func: Any, params: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """Run ``pipeline_func`` with ``params``; return one summary per task that wrote a result.

    Raises:
        PipelineError: a task failed (the message names it and where its logs are).
    """
    import warnings

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
    try:
        pipeline_func(**params)
    except Exception as exc:
        raise PipelineError(
            f"local run of {pipeline_func.name!r} failed: {exc}. Task logs are above; partial outputs "
            f"are under {run_dir}"
        ) from exc
    summary = collect_results(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


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
            # what the task logged to its Metrics outputs, as KFP recorded it
            for outputs in json.loads(path.read_text(encoding="utf-8")).get("artifacts", {}).values():
                for artifact in outputs.get("artifacts", []):
                    meta = artifact.get("metadata") or {}
                    if meta and all(isinstance(v, int | float) and not isinstance(v, bool) for v in meta.values()):
                        entry["metrics"].update(meta)
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
