"""Adapters that give each stage the face of its old APT plugin.

The adapters are built from the stage table (``aptops.stages.STAGES``): each old plugin name becomes an
adapter whose methods are the functions its stages keep (from the stage's ``legacy`` module where the
signature changed), so an adapter cannot fall behind its stage. An adapter is cheap to create; the stage's
library (and its heavy dependencies) is imported only when a legacy method is first called, so registering
an adapter for an unused stage costs nothing.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from aptops.core.deps import load_object
from aptops.core.errors import ConfigError, PluginError
from aptops.stages import STAGES, Stage

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/aptops


@dataclass(frozen=True)
class AdapterSpec:
    """An old plugin: its adapter name, the stages behind it and its methods ``{name: "module:attribute"}``."""

    adapter: str
    stages: tuple[Stage, ...]
    methods: Mapping[str, str]

    @property
    def stage(self) -> Stage:
        """The stage whose category and priority the plugin carries (the first listed)."""
        return self.stages[0]

    def config_keys(self) -> frozenset[str]:
        """The keys the plugin's config takes: the fields of its stages' configs, and of the configs nested in
        them (the old plugins took ``temperature`` where ``DistillConfig`` now nests it in ``objective``).
        Imports the configs' modules."""
        keys: set[str] = set()
        for stage in self.stages:
            if stage.config:
                cls = load_object(stage.config)
                hints = typing.get_type_hints(cls)
                for f in fields(cls):
                    keys.add(f.name)
                    if is_dataclass(hints[f.name]):
                        keys.update(nested.name for nested in fields(hints[f.name]))
        return frozenset(keys)


def _legacy_module(stage: Stage) -> str:
    """Where a stage's old functions live: its ``legacy`` module (old signatures over the stage contract)
    where it has one, else the stage package (the functions kept their old signatures)."""
    # a file test, not find_spec: finding a submodule imports its package, and with it torch
    return f"{stage.module}.legacy" if (_PACKAGE_DIR / stage.name / "legacy.py").is_file() else stage.module


def _specs_from_stage_table() -> dict[str, AdapterSpec]:
    """One adapter per old plugin name; a plugin served by two stages (hub + train) gets both stages' methods."""
    specs: dict[str, AdapterSpec] = {}
    for stage in STAGES:
        if not stage.adapter:  # a stage of aptops' own (eval): no old plugin to stand in for
            continue
        module = _legacy_module(stage)
        methods = {name: f"{module}:{name}" for name in stage.functions}
        known = specs.get(stage.adapter)
        if known:
            methods = {**known.methods, **methods}
        specs[stage.adapter] = AdapterSpec(stage.adapter, (*(known.stages if known else ()), stage), methods)
    return specs


_REGISTRY: dict[str, AdapterSpec] = _specs_from_stage_table()


def register_adapter(spec: AdapterSpec) -> None:
    """Register (or replace) an adapter: a plugin of one's own with the old plugin's face."""
    _REGISTRY[spec.adapter] = spec


class LegacyPlugin:
    """One old plugin: its name, category and priority, its config, and its old methods.

    Methods resolve lazily from the stage library. Event handlers are the bus's ``on_<event>``
    methods; subscribers of other plugins can be attached with :meth:`add_listener`.
    """

    def __init__(self, spec: AdapterSpec, config: Mapping[str, Any] | None) -> None:
        self.name = spec.adapter
        self.stage = spec.stage.name
        self.category = spec.stage.category
        self.priority = spec.stage.priority
        self.version = _aptops_version()
        self.config: dict[str, Any] = dict(config or {})
        self._spec = spec
        self._resolved: dict[str, Callable[..., Any]] = {}
        self._listeners: dict[str, list[Callable[..., Any]]] = {}
        self.initialized = False
        self.events_seen: list[str] = []

    def __repr__(self) -> str:
        return f"<LegacyPlugin {self.name} stage={self.stage} priority={self.priority}>"

    def get_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "category": self.category, "priority": self.priority,
                "version": self.version, "methods": sorted(self._spec.methods)}

    def validate_config(self) -> None:
        """Reject config keys the plugin does not know (catches typos before training starts)."""
        if not self.config:
            return
        known = self._spec.config_keys()
        unknown = sorted(set(self.config) - known)
        if unknown:
            raise ConfigError(
                f"plugin {self.name}: unknown config key {unknown[0]!r}; known keys are "
                f"{', '.join(sorted(known)) or 'none (this plugin takes no config)'}",
                field=unknown[0], value=self.config[unknown[0]],
            )

    def initialize(self) -> None:
        self.initialized = True

    def add_listener(self, event: str, fn: Callable[..., Any]) -> None:
        self._listeners.setdefault(event, []).append(fn)

    def on_event(self, event: str, **payload: Any) -> Any:
        self.events_seen.append(event)
        if event == "on_shutdown":
            self._resolved.clear()
            self.initialized = False
        return [fn(**payload) for fn in self._listeners.get(event, [])]

    def __getattr__(self, item: str) -> Any:
        spec = self.__dict__.get("_spec")
        if spec is None or item not in spec.methods:
            raise AttributeError(item)
        if item not in self._resolved:
            self._resolved[item] = load_object(spec.methods[item])
        return self._resolved[item]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._spec.methods))


@dataclass
class Adapter:
    """What ``get_adapter`` returns: holds the config, builds the legacy plugin on demand."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)

    def get_legacy_plugin(self) -> LegacyPlugin:
        return LegacyPlugin(_REGISTRY[self.name], self.config)


def get_adapter(name: str, config: Mapping[str, Any] | None = None) -> Adapter:
    """The adapter of an old plugin by its adapter name (``data_processors``).

    Raises:
        PluginError: the name is unknown.
    """
    if name not in _REGISTRY:
        raise PluginError(f"no adapter named {name!r}: the adapters are {', '.join(sorted(_REGISTRY))}")
    return Adapter(name, dict(config or {}))


def get_all_legacy_adapters() -> dict[str, Adapter]:
    """Every adapter (the 8 old plugins and any registered since), by adapter name."""
    return {name: Adapter(name) for name in sorted(_REGISTRY)}


def _aptops_version() -> str:
    from aptops import __version__

    return __version__
