"""What every component body does around its library call, kept here so components stay thin.

Configure logging, pick the metrics sink from the environment, time the stage and record its outcome,
then copy the result's numbers into the KFP ``Metrics`` artifact (duck-typed: anything with
``log_metric``), so the KFP UI shows them. No ``kfp`` import: the library stays orchestrator-free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aptops.core.artifacts import StageResult
from aptops.core.logging import configure_logging
from aptops.core.metrics import sink_from_env, stage_run

log = logging.getLogger(__name__)
C = TypeVar("C")


def run_component(
    stage: str,
    fn: Callable[[], StageResult],
    *,
    pipeline: str,
    run_id: str,
    step: str | None = None,
    metrics: Any = None,
    metrics_dir: str | Path | None = None,
) -> StageResult:
    """Run one stage function inside a component body.

    Args:
        stage: the stage name, for metric labels.
        step: the component's name within the stage (``clean``, ``stats``), when a stage has several.
        fn: the library call, taking no arguments (a lambda over the component's inputs).
        pipeline: the pipeline name, for metric labels.
        run_id: the pipeline run id (KFP's job id placeholder), for metric labels.
        metrics: the component's ``Output[Metrics]`` artifact, if any.
        metrics_dir: where the textfile sink writes when no other sink is configured.

    Returns:
        The stage's result.
    """
    configure_logging()
    if not is_main_process():  # under torchrun every rank trains; rank 0 alone reports, as it alone writes
        return fn()
    default_dir = Path(metrics_dir) if metrics_dir else Path(getattr(metrics, "path", ".")).parent / "prometheus"
    sink = sink_from_env(default_dir)
    with stage_run(pipeline=pipeline, run_id=run_id or "local", stage=stage, step=step, sink=sink) as sm:
        result = fn()
        sm.gauges(result.metrics)
    if metrics is not None:
        for name, value in result.metrics.items():
            metrics.log_metric(name, float(value))
    return result


def is_main_process() -> bool:
    """False in the processes torchrun starts besides global rank 0 (they train but write nothing)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def publish_debug_report(result: StageResult, target: str | Path, pipeline: str) -> None:
    """Copy a training run's debug report to a component's HTML output, or say there that the debugger was off
    (a KFP output must always be written)."""
    import html
    import shutil

    if "debug_report" in result.outputs:
        shutil.copyfile(result.outputs["debug_report"], target)
        return
    Path(target).write_text(
        "<!doctype html><html><body><p>The training debugger was off for this run "
        f"({html.escape(pipeline)}); set debug=true to watch gradients, activations and memory.</p></body></html>",
        encoding="utf-8")


def json_param(text: str, field: str, default: Any = None) -> Any:
    """A component's JSON string parameter (``training_args='{"warmup_steps": 10}'``) as a value.

    Raises:
        ConfigError: the text is not JSON; the message names the parameter.
    """
    import json

    from aptops.core.errors import ConfigError

    if not (text or "").strip():
        return {} if default is None else default
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{field} is not valid JSON: {exc}", field=field, value=text) from None


def list_param(text: str) -> list[str]:
    """A component's comma-separated string parameter (``"s3://a, oss://b"``) as its non-empty, stripped items."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def apply_overrides(config: C, text: str, field: str = "overrides") -> C:
    """``config`` with a component's YAML overrides parameter applied on top of its flat parameters.

    ``text`` is a YAML mapping of the stage config's fields, nested configs as nested mappings or dotted keys
    (``"training: {lora_r: 8}"``, ``"objective.temperature: 1.0"``); a mapping-valued field such as
    ``training_args`` is merged key by key into what the flat parameters set. Empty text changes nothing.

    Raises:
        ConfigError: not YAML, not a mapping, an unknown key or an invalid value; the message names the parameter.
    """
    from collections.abc import Mapping

    from aptops.core.config import load_yaml, show, with_overrides
    from aptops.core.errors import ConfigError

    if not (text or "").strip():
        return config
    data = load_yaml(text, source=f"the {field} parameter")
    if data is None:
        return config
    if not isinstance(data, Mapping):
        raise ConfigError(f"the {field} parameter must be a YAML mapping of {type(config).__name__} fields "
                          f"(for example 'training: {{lora_r: 8}}'), got {show(data)}", field=field, value=show(data))
    return with_overrides(config, data)
