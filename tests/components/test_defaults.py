"""A component's defaults are its library config's defaults: a pipeline user and a CLI user who set nothing get
the same run. The configs a component builds are read from its body (``PruneConfig(``, ``TrainConfig(`` ...), so
this test cannot fall behind a new component or a new parameter."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import typing

import pytest

import aptops_components
from aptops.stages import STAGES

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
    found = []
    for info in pkgutil.iter_modules(aptops_components.__path__):
        module = importlib.import_module(f"aptops_components.{info.name}")
        for name, obj in sorted(vars(module).items()):
            fn = getattr(obj, "python_func", None)
            if fn is not None and fn.__module__ == module.__name__:
                found.append((name, fn))
    return found


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
