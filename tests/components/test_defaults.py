"""A component's defaults are its library config's defaults: a pipeline user and a CLI user who set nothing get
the same run. The configs a component builds are read from its body (``PruneConfig(``, ``TrainConfig(`` ...), so
this test cannot fall behind a new component or a new parameter."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import typing

import pytest

from aptops.stages import STAGES
from tests.components.catalog import all_components

# A component parameter cannot be None or a mapping in KFP: "" (or 0 where the field counts) stands for None,
# and dicts / lists travel as JSON or comma-separated text that the body parses.
_NONE_SPELLINGS = ("", 0)
# Deliberate: a multimodal pipeline needs encoders to run at all, so its component names real ones; the library
# leaves a modality out unless it is given an encoder.
_DELIBERATE = {("train_multimodal_model", "text_encoder"), ("train_multimodal_model", "image_encoder"),
               ("train_multimodal_model", "audio_encoder")}


def _config_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    for module in ["aptops.lm", *(s.module for s in STAGES)]:
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            if name.endswith("Config") and dataclasses.is_dataclass(obj):
                found[name] = obj
    return found


def _defaults(cls: type) -> dict[str, typing.Any]:
    """Every field's default, nested configs included (by the nested field's own name)."""
    out: dict[str, typing.Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out.setdefault(f.name, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            if dataclasses.is_dataclass(hints[f.name]):
                for k, v in dataclasses.asdict(value).items():
                    out.setdefault(k, v)
            else:
                out.setdefault(f.name, value)
    return out


def _components() -> list[tuple[str, typing.Any]]:
    return [(name, component.python_func) for _, name, component in all_components()]


COMPONENTS = _components()


@pytest.mark.parametrize(("name", "fn"), COMPONENTS, ids=[n for n, _ in COMPONENTS])
def test_component_defaults_equal_the_library_config_defaults(name, fn):
    classes = _config_classes()
    names = list(dict.fromkeys(re.findall(r"\b([A-Z]\w*Config)\(", inspect.getsource(fn))))
    assert set(names) <= set(classes), f"{name} builds {set(names) - set(classes)}, which no stage exports"
    used = [classes[c] for c in names]
    defaults: dict[str, typing.Any] = {}
    for cls in reversed(used):  # the first config a body builds wins where two share a field name
        defaults.update(_defaults(cls))
    wrong = []
    for param in inspect.signature(fn).parameters.values():
        if param.default is inspect.Parameter.empty or param.name not in defaults or (name, param.name) in _DELIBERATE:
            continue
        library = defaults[param.name]
        if isinstance(library, dict | list | tuple) or (library is None and param.default in _NONE_SPELLINGS):
            continue
        if param.default != library:
            wrong.append(f"{param.name}={param.default!r} (the library says {library!r})")
    assert not wrong, f"{name}: " + ", ".join(wrong)


def test_the_test_reads_configs_out_of_component_bodies():
    names = dict(COMPONENTS)
    assert "prune_model" in names and "distill_model" in names and len(names) >= 15
    assert re.findall(r"\b([A-Z]\w*Config)\(", inspect.getsource(names["prune_model"])) == ["PruneConfig", "TrainConfig"]


@pytest.mark.parametrize(("name", "fn"), COMPONENTS, ids=[n for n, _ in COMPONENTS])
def test_a_component_that_builds_a_config_takes_yaml_overrides(name, fn):
    """One parameter surface: the flat parameters, then ``overrides`` (YAML of any config field) on top."""
    source = inspect.getsource(fn)
    if not re.search(r"\bconfig = [A-Z]\w*Config\(", source):
        assert "overrides" not in inspect.signature(fn).parameters
        return
    param = inspect.signature(fn).parameters.get("overrides")
    assert param is not None and param.annotation is str and param.default == "", name
    assert "config = apply_overrides(config, overrides)" in source, f"{name} ignores its overrides"
    assert source.index("config = apply_overrides(config, overrides)") < source.index("run_component(")


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
