"""What every component body does around its library call, kept here so components stay thin.

Configure logging, pick the metrics sink from the environment, time the stage and record its outcome,
then copy the result's numbers into the KFP ``Metrics`` artifact (duck-typed: anything with
``log_metric``), so the KFP UI shows them. No ``kfp`` import: the library stays orchestrator-free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
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


#: Flat component parameters that set ``TrainingArguments``: name -> (path, type, the Trainer's default in aptops'
#: recipes, description). ``tests/components/test_defaults.py`` checks the defaults against ``TrainingArguments``.
TRAINING_ARGS: dict[str, tuple[str, type, Any, str]] = {
    "learning_rate": ("training_args.learning_rate", float, 5e-5, "the peak learning rate."),
    "max_steps": ("training_args.max_steps", int, -1, "optimizer steps (-1: num_train_epochs decides; 0: none, the model is written as it comes)."),
    "num_train_epochs": ("training_args.num_train_epochs", float, 3.0, "passes over the data when max_steps is -1."),
    "gradient_accumulation_steps": ("training_args.gradient_accumulation_steps", int, 1,
                                    "batches whose gradients are summed before each optimizer step."),
    "batch_size": ("training_args.per_device_train_batch_size", int, 8, "sequences per device per step."),
}
#: The same, as the ``paths`` of :func:`config_from_params`.
TRAINING_ARG_PARAMS = {name: path for name, (path, *_rest) in TRAINING_ARGS.items()}


def param_paths(cls: type, *, paths: Mapping[str, str] | None = None) -> dict[str, str]:
    """Which config field each flat parameter name sets: every field of ``cls`` by its own name, a nested config's
    field by its own name too when no other field has it (``block_size`` -> ``training.block_size``), and the
    dotted paths ``paths`` gives to names no field has (``batch_size`` -> ``training_args.per_device_train_batch_size``,
    which in a config with nested training settings is ``training.training_args.per_device_train_batch_size``)."""
    import dataclasses
    import typing

    found: dict[str, str] = {}
    nested: dict[str, list[str]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        found[f.name] = f.name
        if dataclasses.is_dataclass(hints[f.name]):
            for inner, path in param_paths(hints[f.name]).items():
                nested.setdefault(inner, []).append(f"{f.name}.{path}")
    found |= {name: options[0] for name, options in nested.items() if name not in found and len(options) == 1}
    for name, path in (paths or {}).items():  # a name no field has; its first part is found as a field is
        head, _, rest = path.partition(".")
        found.setdefault(name, ".".join(filter(None, (found.get(head, head), rest))))
    return found


def _field_type(cls: type, path: str) -> Any:
    import dataclasses
    import typing

    tp: Any = cls
    for part in path.split("."):
        if not dataclasses.is_dataclass(tp):
            return Any  # inside a mapping field (training_args.learning_rate): the value as given
        tp = typing.get_type_hints(tp)[part]
    return tp


def _from_kfp(tp: Any, value: Any, name: str) -> Any:
    """A KFP parameter value in the field's terms: KFP has no None, sequences or mappings as simple parameters,
    so "" (0 for a count) stands for None, comma-separated text for a tuple, JSON text for a mapping."""
    import types
    import typing

    args = typing.get_args(tp)
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
    if optional and (value == "" or (value == 0 and not isinstance(value, bool) and int in args)):
        return None
    origin = typing.get_origin(tp) or tp
    if isinstance(value, str) and origin in (tuple, list):
        return list_param(value)
    if isinstance(value, str) and origin in (dict, Mapping):
        return json_param(value, name)
    return value


def config_from_params(cls: type[C], params: Mapping[str, Any], *, paths: Mapping[str, str] | None = None) -> C:
    """The stage config a component's parameters describe: ``cls()`` with each flat parameter set on the field of
    its name (:func:`param_paths`), then the component's ``overrides`` YAML on top, validated by ``cls``.

    Pass the component's ``locals()`` first thing in its body; parameters that name no field (artifacts,
    ``pipeline``, ``run_id``) are left alone. Mapping-valued parameters (``training_args`` JSON) are merged after the
    flat ones, so their keys win, as ``--set`` wins on the CLI.

    Raises:
        ConfigError: a parameter's value does not fit its field (the message names it).
    """
    from aptops.core.config import with_overrides

    where = param_paths(cls, paths=paths)
    scalars: dict[str, Any] = {}
    mappings: dict[str, Any] = {}
    for name, value in params.items():
        if name in where and name != "overrides":
            path = where[name]
            converted = _from_kfp(_field_type(cls, path), value, name)
            (mappings if isinstance(converted, Mapping) else scalars)[path] = converted
    config = with_overrides(with_overrides(cls(), scalars), mappings)
    return apply_overrides(config, params.get("overrides", ""))


def run_step(stage: str, step: str, fn: Callable[[], StageResult], params: Mapping[str, Any]) -> StageResult:
    """:func:`run_component` for a component body whose ``locals()`` (taken first) are ``params``: its ``pipeline``,
    ``run_id`` and ``metrics`` output (when it has one) label and receive the numbers."""
    return run_component(stage, fn, step=step, pipeline=params.get("pipeline", stage), run_id=params.get("run_id", ""),
                         metrics=params.get("metrics"))
