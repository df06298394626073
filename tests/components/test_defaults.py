"""One source of truth for every parameter: a component's flat parameters are named after the config fields they set
(``aptops.core.runtime.param_paths``), a component left at its defaults builds the library's default config, every
config field is reachable by its own dotted name from the CLI (``--set``) and from a component (``overrides``) with the
same default, and the CLI's stage commands take their options from the same config class. The config a component
builds is read from its body (``config_from_params(XConfig``), so this test cannot fall behind a new component."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import typing

import pytest

from aptops.core.runtime import TRAINING_ARG_PARAMS, config_from_params, param_paths
from tests.components.catalog import all_components

# Deliberate: a multimodal pipeline needs encoders to run at all, so its component names real ones (the library
# leaves a modality out unless it is given an encoder) and freezes the pretrained text encoder it names; pruning's recovery is short by default in a pipeline; the
# quality component runs after the pipeline's sharded dedup steps removed near duplicates across every shard, so it
# leaves out the within-shard near-duplicate check the library runs on a lone dataset.
_DELIBERATE = {("train_multimodal_model", "text_encoder"), ("train_multimodal_model", "image_encoder"),
               ("train_multimodal_model", "audio_encoder"), ("prune_model", "max_steps"),
               ("prune_model", "per_device_train_batch_size"), ("quality_check", "checks"),
               ("train_multimodal_model", "freeze")}
# Parameters that are inputs or labels, not settings: they name no config field by design.
_NOT_SETTINGS = {"overrides", "pipeline", "run_id", "source", "shard", "repo", "manifest", "model_path",
                 "destinations", "status", "license", "language", "prompts", "first_prompt", "model_name",
                 "system_prompt", "max_tokens", "ollama_host", "on_bad_input", "label", "baseline_label"}


def _components() -> list[tuple[str, typing.Any]]:
    return [(name, component.python_func) for _, name, component in all_components()]


COMPONENTS = _components()


def _config_of(fn: typing.Any) -> tuple[type, dict[str, str]] | None:
    """The config class a component body builds and the flat-parameter paths it uses."""
    found = re.search(r"config_from_params\((\w+Config),.*?(paths=(\w+|\{[^}]*\}))?\)", inspect.getsource(fn), re.S)
    if found is None:
        return None
    module = inspect.getmodule(fn)
    source = inspect.getsource(fn)
    imported = re.search(rf"from ([\w.]+) import (?:\w+, )*{found.group(1)}\b", source)
    cls = getattr(importlib.import_module(imported.group(1)), found.group(1))
    paths = TRAINING_ARG_PARAMS if found.group(3) == "TRAINING_ARG_PARAMS" else (
        eval(found.group(3), vars(module)) if found.group(3) else {})  # a literal mapping of names
    return cls, paths


def _settings(fn: typing.Any) -> dict[str, typing.Any]:
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty and isinstance(p.default, str | int | float | bool)}


@pytest.mark.parametrize(("name", "fn"), COMPONENTS, ids=[n for n, _ in COMPONENTS])
def test_a_component_at_its_defaults_builds_the_library_default_config(name, fn):
    built = _config_of(fn)
    if built is None:
        assert "overrides" not in inspect.signature(fn).parameters, f"{name} takes overrides but builds no config"
        return
    cls, paths = built
    where = param_paths(cls, paths=paths)
    settings = {k: v for k, v in _settings(fn).items() if (name, k) not in _DELIBERATE}
    strays = sorted(set(settings) - set(where) - _NOT_SETTINGS)
    assert not strays, f"{name}: {strays} name no field of {cls.__name__} (name a parameter after the field it sets)"
    built = _without_training_args(config_from_params(cls, settings, paths=paths), name)
    assert built == _without_training_args(cls(), name), f"{name}'s defaults differ from {cls.__name__}()"
    param = inspect.signature(fn).parameters["overrides"]
    assert param.annotation is str and param.default == "", name


def _effective_training_args() -> typing.Any:
    from aptops.lm.arguments import training_arguments
    from aptops.lm.training import RECIPE_DEFAULTS

    return training_arguments("/tmp/aptops-defaults", {}, recipe_defaults=RECIPE_DEFAULTS)


def _without_training_args(config: typing.Any, name: str) -> typing.Any:
    """``config`` with its ``training_args`` checked against what the Trainer would use with none given (a flat
    ``learning_rate=5e-5`` is the default, spelt out) and then emptied, so the rest compares field by field."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            config = dataclasses.replace(config, **{f.name: _without_training_args(value, name)})
        elif f.name == "training_args" and value and any(k in TRAINING_ARG_PARAMS.values() for k in
                                                           (f"training_args.{k}" for k in value)):
            effective = _effective_training_args()
            wrong = {k: (v, getattr(effective, k)) for k, v in value.items()
                     if (name, k) not in _DELIBERATE and getattr(effective, k) != v}
            assert not wrong, f"{name}: training_args (component, Trainer default) differ: {wrong}"
            config = dataclasses.replace(config, training_args={})
    return config


def _field_paths(config: typing.Any) -> list[tuple[str, typing.Any]]:
    """Every leaf field of a config instance by its dotted name, with its value (a nested config's own defaults
    as its parent sets them)."""
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out += [(f"{f.name}.{path}", v) for path, v in _field_paths(value)]
        else:
            out.append((f.name, value))
    return out


def _stage_configs() -> list[type]:
    from aptops.stages import STAGES

    configs = []
    for stage in STAGES:
        if stage.config:
            module, _, attr = stage.config.partition(":")
            configs.append(getattr(importlib.import_module(module), attr))
    return configs


@pytest.mark.parametrize("cls", _stage_configs(), ids=lambda c: c.__name__)
def test_every_config_field_is_reachable_by_its_name_from_cli_and_component_with_the_same_default(cls):
    import json

    import yaml

    from aptops.core.config import load_config
    from aptops.core.runtime import apply_overrides

    for path, default in _field_paths(cls()):
        if default is None or isinstance(default, dict):
            continue  # None has no CLI spelling but 'none'; a mapping merges key by key (tested below)
        text = (json.dumps(list(default)) if isinstance(default, tuple) else str(default).lower()
                if isinstance(default, bool) else str(default))
        from_cli = load_config(cls, None, overrides=[f"{path}={text}"])
        from_component = apply_overrides(cls(), yaml.safe_dump({path: default if not isinstance(default, tuple)
                                                                 else list(default)}))
        assert from_cli == from_component == cls(), path


def test_the_cli_and_the_components_read_one_config_class_per_step():
    """Every stage command's --set reaches the same config class a component of that stage builds: one class, one
    set of names, one set of defaults, whether a step runs from the CLI or in a pipeline."""
    from aptops.cli.common import STAGE_COMMANDS

    by_component = {}
    for module, _name, component in all_components():
        built = _config_of(component.python_func)
        if built is not None:
            by_component.setdefault(module, set()).add(built[0])
    assert len(STAGE_COMMANDS) >= 12, STAGE_COMMANDS
    for command in STAGE_COMMANDS:
        module, _, attr = command.config.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        assert cls in by_component.get(command.stage, set()), (command, by_component.get(command.stage))


def test_flat_parameters_follow_kfp_spellings_into_the_config():
    from aptops.prune import PruneConfig
    from aptops.train import TrainConfig

    cfg = config_from_params(TrainConfig, {"early_stopping_patience": 0, "lora_target_modules": "q_proj, v_proj",
                                           "batch_size": 4, "max_steps": 3, "training_args": '{"max_steps": 5}',
                                           "overrides": "lora_r: 8", "trained": object()}, paths=TRAINING_ARG_PARAMS)
    assert cfg.early_stopping_patience is None and cfg.lora_target_modules == ("q_proj", "v_proj")
    assert cfg.training_args == {"per_device_train_batch_size": 4, "max_steps": 5} and cfg.lora_r == 8
    nested = config_from_params(PruneConfig, {"block_size": 64, "learning_rate": 1e-3}, paths=TRAINING_ARG_PARAMS)
    assert nested.training.block_size == 64 and nested.training.training_args == {"learning_rate": 1e-3}


class _Out:
    """What the KFP executor hands a component body for an output artifact: a path and metadata."""

    def __init__(self, path):
        self.path = str(path)
        self.metadata = {}
        self.logged = {}

    def log_metric(self, name, value):
        self.logged[name] = value


def test_overrides_reach_the_library_and_bad_ones_fail_before_work(tmp_path, monkeypatch):
    from aptops.core.errors import ConfigError
    from aptops_components.data import clean_text

    monkeypatch.setenv("APTOPS_METRICS_DIR", str(tmp_path / "prom"))
    src = tmp_path / "in.txt"
    src.write_text("short\na line long enough to keep\n")
    fn = clean_text.python_func
    every = _Out(tmp_path / "all")
    fn(source=str(src), dataset=every, metrics=_Out(tmp_path / "m1"))
    assert every.metadata["rows"] == 2
    kept = _Out(tmp_path / "kept")
    fn(source=str(src), dataset=kept, metrics=_Out(tmp_path / "m2"), min_chars=1, overrides="min_chars: 10")
    assert kept.metadata["rows"] == 1
    for bad, message in (("min_char: 10", "unknown config key 'min_char' for CleanConfig"),
                         ("[1, 2]", "the overrides parameter must be a YAML mapping of CleanConfig fields"),
                         ("min_chars: [1", "the overrides parameter is not valid YAML")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            fn(source=str(src), dataset=_Out(tmp_path / "bad"), metrics=_Out(tmp_path / "m3"), overrides=bad)
        assert not (tmp_path / "bad").exists()


def test_nested_overrides_reach_a_nested_config():
    from aptops.core.runtime import apply_overrides
    from aptops.distill import DistillConfig
    from aptops.train import TrainConfig

    base = DistillConfig(training=TrainConfig(training_args={"learning_rate": 1e-4, "max_steps": 5}))
    cfg = apply_overrides(base, "objective: {temperature: 1.0, alpha: 0.8}\ntraining:\n  lora_r: 4\n"
                                "  training_args: {warmup_steps: 10}\n")
    assert (cfg.objective.temperature, cfg.objective.alpha, cfg.training.lora_r) == (1.0, 0.8, 4)
    assert cfg.training.training_args == {"learning_rate": 1e-4, "max_steps": 5, "warmup_steps": 10}


def test_every_stage_command_runs_a_stage_function_that_takes_the_output_and_the_config():
    """A stage command names its function as text (loaded when it runs): each one resolves and takes the
    ``output_dir`` and ``config`` the command passes (the e2e CLI tests run them with their options)."""
    import aptops.cli  # noqa: F401  (makes the commands)
    from aptops.cli.common import STAGE_COMMANDS

    for command in STAGE_COMMANDS:
        module, _, attr = command.run.partition(":")
        fn = getattr(importlib.import_module(module), attr)
        params = inspect.signature(fn).parameters
        assert {"output_dir", "config"} <= set(params), (command, list(params))
