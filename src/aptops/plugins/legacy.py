"""Adapters that give each stage the face of its old APT plugin.

An adapter is cheap to create; the stage's library (and its heavy dependencies) is imported only
when a legacy method is first called, so registering an adapter for an unused stage costs nothing.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aptops.core.errors import ConfigError, PluginError
from aptops.stages import STAGES, Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterSpec:
    """Where a stage's legacy methods live: ``{legacy method name: "module:attribute"}``."""

    adapter: str
    stage: str
    methods: Mapping[str, str]
    config_keys: frozenset[str] = frozenset()


# Only stages whose library exists register here; each stage issue adds its own row.
_REGISTRY: dict[str, AdapterSpec] = {}


def register_adapter(spec: AdapterSpec) -> None:
    """Register (or replace) the adapter of a stage."""
    _REGISTRY[spec.adapter] = spec


register_adapter(
    AdapterSpec(
        adapter="data_processors",
        stage="data",
        methods={"clean_text": "aptops.data.clean:clean_text", "clean_dataset": "aptops.data.stage:clean_dataset",
                 "dataset_stats": "aptops.data.stage:dataset_stats"},
        config_keys=frozenset({"strategy", "custom_rules", "text_column", "min_chars"}),
    )
)


register_adapter(
    AdapterSpec(
        adapter="cloud_storage",
        stage="backup",
        methods={"backup_to_s3": "aptops.backup.core:backup_to_s3", "restore_from_s3": "aptops.backup.core:restore_from_s3",
                 "backup_to_oss": "aptops.backup.core:backup_to_oss", "restore_from_oss": "aptops.backup.core:restore_from_oss",
                 "backup_model": "aptops.backup.core:backup_model",
                 "restore_from_cloud": "aptops.backup.core:restore_from_cloud"},
    )
)


register_adapter(
    AdapterSpec(
        adapter="advanced_debugging",
        stage="debug",
        methods={name: f"aptops.debug:{name}" for name in (
            "monitor_gradients", "detect_gradient_anomalies", "monitor_activations", "detect_dead_neurons",
            "detect_saturated_neurons", "track_memory", "detect_memory_leaks", "profile_section", "profile_model",
            "diagnose_training", "detect_nan_inf", "visualize_gradients", "visualize_activations",
            "generate_full_report")},
        config_keys=frozenset({"log_interval", "track_layers", "activation_layers", "memory_interval_s",
                               "grad_threshold", "stop_on_nan", "trace_nan_modules", "report_dir"}),
    )
)


register_adapter(
    AdapterSpec(
        adapter="multimodal_training",
        stage="multimodal",
        methods={name: f"aptops.multimodal:{name}" for name in (
            "create_multimodal_model", "create_multimodal_dataloader", "train_multimodal", "inference_multimodal",
            "cross_modal_attention", "evaluate_multimodal", "train_multimodal_model")},
        config_keys=frozenset({"fusion", "hidden_size", "freeze", "loss_weights", "modality_lr", "epochs"}),
    )
)


class LegacyPlugin:
    """One old plugin: its name, category and priority, its config, and its old methods.

    Methods resolve lazily from the stage library. Event handlers are the bus's ``on_<event>``
    methods; subscribers of other plugins can be attached with :meth:`add_listener`.
    """

    def __init__(self, spec: AdapterSpec, stage: Stage, config: Mapping[str, Any] | None) -> None:
        self.name = spec.adapter
        self.stage = stage.name
        self.category = stage.category
        self.priority = stage.priority
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
        if self._spec.config_keys:
            unknown = sorted(set(self.config) - set(self._spec.config_keys))
            if unknown:
                raise ConfigError(
                    f"plugin {self.name}: unknown config key {unknown[0]!r}; known keys are "
                    f"{', '.join(sorted(self._spec.config_keys))}",
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
            module_name, _, attr = spec.methods[item].partition(":")
            self._resolved[item] = getattr(importlib.import_module(module_name), attr)
        return self._resolved[item]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._spec.methods))


@dataclass
class Adapter:
    """What ``get_adapter`` returns: holds the config, builds the legacy plugin on demand."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)

    def get_legacy_plugin(self) -> LegacyPlugin:
        spec = _REGISTRY[self.name]
        stage = next(s for s in STAGES if s.name == spec.stage)
        return LegacyPlugin(spec, stage, self.config)


def get_adapter(name: str, config: Mapping[str, Any] | None = None) -> Adapter:
    """The adapter of an old plugin by its adapter name (``data_processors``).

    Raises:
        PluginError: the name is unknown, or its stage is not part of aptops yet.
    """
    if name not in _REGISTRY:
        planned = sorted({s.adapter for s in STAGES} - set(_REGISTRY))
        hint = f" ({name} is planned but its stage has not landed yet)" if name in planned else ""
        raise PluginError(
            f"no adapter named {name!r}{hint}: available adapters are {', '.join(sorted(_REGISTRY)) or 'none'}"
        )
    return Adapter(name, dict(config or {}))


def get_all_legacy_adapters() -> dict[str, Adapter]:
    """Every available adapter, by adapter name."""
    return {name: Adapter(name) for name in sorted(_REGISTRY)}


def _aptops_version() -> str:
    from aptops import __version__

    return __version__
