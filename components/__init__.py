"""KFP lightweight components, one module per stage, each a thin wrapper over the library.

Every component is declared with its stage's :func:`stage_component` decorator: ``install_kfp_package=False``
(the stage image carries kfp), ``base_image`` = the stage's image; the library import is inside the body (the
body is shipped as source). The pipelines re-base them on the registry and tag chosen at compile time
(``aptops.cluster.settings``).

Parameters: flat ones for what pipeline users tune, each named after the config field it sets (or the
``TrainingArguments`` key, ``batch_size`` for the per-device batch), and one ``overrides`` parameter, a YAML mapping
of any field of the stage's config, nested ones included (``"training: {lora_r: 8}"``), applied on top with the
same validation as ``--set`` on the CLI. The body builds its config with
``aptops.core.runtime.config_from_params(Config, locals())``: the config class is the one source of names, types,
defaults and validation (``tests/components/test_defaults.py`` checks a component left at its defaults builds the
library's default config). Placement (image, node pool, resources) is not a parameter: the pipelines set it once
per task through ``ClusterSettings``.
"""

from __future__ import annotations

import inspect
import json
import linecache
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aptops.stages import DEFAULT_REGISTRY, DEFAULT_TAG, stage_image

__all__ = ["DEFAULT_REGISTRY", "DEFAULT_TAG", "stage_component", "stage_image"]

def stage_component(stage: str, *, config: str | None = None, tuned: Sequence[str] = (),
                    paths: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None,
                    pipeline: str | None = None) -> Callable[[Callable[..., Any]], Any]:
    """The ``dsl.component`` decorator of ``stage``'s components: its image, kfp not installed at run time.

    With ``config`` (``module:Class``), the function's ``**tuned`` parameter becomes one flat parameter per name
    in ``tuned`` and an ``overrides`` parameter, written from the config class: each named after the field it sets
    (:func:`aptops.core.runtime.param_paths`; ``paths`` names the others, such as ``batch_size``), typed and
    defaulted as the field in KFP's spelling ("" or 0 for None, comma-separated text for a list, JSON for a
    mapping), described by the field's line in the class's ``Attributes:``. ``defaults`` are the deliberate
    differences from the library's defaults. ``pipeline`` and ``run_id`` follow (the metric labels; ``pipeline``
    defaults to the pipeline the component is first used in, else the stage). The body reads them all from
    ``locals()``, taken first.
    """
    from kfp import dsl

    def decorate(fn: Callable[..., Any]) -> Any:
        if config is not None:
            fn = _with_tuned_parameters(fn, config, tuned, dict(paths or {}), dict(defaults or {}), pipeline or stage)
        return dsl.component(base_image=stage_image(stage), install_kfp_package=False)(fn)

    return decorate


def _kfp_parameter(tp: Any, value: Any) -> tuple[str, Any]:
    """A config field's annotation and default as a KFP parameter's."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        name, default = _kfp_parameter(next(a for a in args if a is not type(None)), value)
        return name, default if value is not None else {"int": 0, "float": 0.0, "bool": False}.get(name, "")
    if origin is typing.Literal:
        return type(args[0]).__name__, value
    if tp in (bool, int, float, str):
        return tp.__name__, tp(value) if value is not None else tp()
    if origin in (tuple, list) or tp in (tuple, list):
        return "str", ",".join(str(v) for v in value or ())
    if origin in (dict, Mapping) or tp is dict:
        return "str", json.dumps(value or {})
    return "str", "" if value is None else str(value)


def _field_docs(cls: type) -> dict[str, str]:
    """``name: text`` of a config class's ``Attributes:`` section, continuation lines joined."""
    docs: dict[str, str] = {}
    current = None
    for line in (inspect.getdoc(cls) or "").splitlines()[1:]:
        field = re.match(r"^    (\w+):\s*(.*)$", line)
        if field:
            current = field.group(1)
            docs[current] = field.group(2)
        elif current and line.startswith("        "):
            docs[current] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            current = None
    return docs


def _with_tuned_parameters(fn: Callable[..., Any], config: str, tuned: Sequence[str], paths: dict[str, str],
                           defaults: dict[str, Any], pipeline: str) -> Callable[..., Any]:
    from aptops.core.deps import load_object
    from aptops.core.runtime import TRAINING_ARG_PARAMS, TRAINING_ARGS, param_paths

    cls = load_object(config)
    where = param_paths(cls, paths={**paths, **TRAINING_ARG_PARAMS})
    instance = cls()
    lines, described = [], []
    for name in tuned:
        if name not in where:
            raise TypeError(f"{fn.__name__}: {name!r} names no field of {cls.__name__}; known: {', '.join(where)}")
        path = where[name]
        if name in TRAINING_ARGS and path.endswith(TRAINING_ARGS[name][0]):
            kind, value, doc = TRAINING_ARGS[name][1].__name__, TRAINING_ARGS[name][2], TRAINING_ARGS[name][3]
        else:
            parent, leaf = _parent(instance, path), path.rsplit(".", 1)[-1]
            hint = typing.get_type_hints(type(parent))[leaf]
            kind, value = _kfp_parameter(hint, getattr(parent, leaf))
            doc = _field_docs(type(parent)).get(leaf, "")
            if type(None) in typing.get_args(hint):
                doc += f" (here {value!r} stands for None)"
        value = defaults.get(name, value)
        lines.append(f"    {name}: {kind} = {value!r},")
        described.append(f"        {name}: {' '.join(doc.split())}" if doc else f"        {name}: sets {path}.")
    lines += ['    overrides: str = "",', f"    pipeline: str = {pipeline!r},", '    run_id: str = "",']
    described.append(f"        overrides: YAML mapping of any {cls.__name__} field, applied on top (as --set on the CLI).")
    source = textwrap.dedent(inspect.getsource(fn))
    source = source[source.index("def "):]
    marker = re.search(r"\n\s*\*\*tuned,?[ \t]*$", source, re.M)
    if marker is None:
        raise TypeError(f"{fn.__name__} has no **tuned parameter to write its flat parameters into")
    source = source[:marker.start()] + "\n" + "\n".join(lines) + source[marker.end():]
    first, *rest = (inspect.getdoc(fn) or "").splitlines()
    doc = "\n".join([first, *(f"    {line}" if line else "" for line in rest), "", "    Args:", *described, "    "])
    source = source.replace(f'"""{fn.__doc__}"""', f'"""{doc}"""', 1)
    filename = f"<aptops component {fn.__module__}.{fn.__name__}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # inspect.getsource reads it
    namespace: dict[str, Any] = {}
    # our own source with its flat parameters written in; not under this module's __future__ (kfp reads real types)
    exec(compile(source, filename, "exec", dont_inherit=True), fn.__globals__, namespace)
    made = namespace[fn.__name__]
    made.__module__, made.__qualname__ = fn.__module__, fn.__qualname__
    return made


def _parent(config: Any, path: str) -> Any:
    for part in path.split(".")[:-1]:
        config = getattr(config, part)
    return config
