"""The event bus every training stage shares: events delivered to subscribers in priority order, a raising
subscriber isolated; and the watchers that installed packages offer to training runs.

``ConsoleCore`` keeps the old APT toolkit's entry points working::

    core = ConsoleCore()
    core.register_plugin(get_adapter("data_processors"))
    core.compile_plugins()          # order by priority, validate configs
    core.start()                    # initialise plugins, emit on_start
    core.emit_event("on_batch_start", step=0, context_data={...})
    core.shutdown()                 # emit on_shutdown, release resources

A subscriber is any object with ``on_<event>`` methods (or a generic ``on_event(name, **payload)``).
Lower priority numbers run first (100 data ... 900 export), registration order breaks ties.

A *watcher* is a subscriber a package offers to every training run under the ``aptops.watchers`` entry-point
group (the debug stage offers ``debug``: gradients, activations, memory, NaNs). A training loop asks for one by
name with :func:`load_watcher`, so no stage imports the package that watches it.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aptops.core.errors import ConfigError, PluginError

log = logging.getLogger(__name__)

#: The entry-point group under which packages offer training watchers (``debug = "aptops.debug.callback:watcher"``).
WATCHER_GROUP = "aptops.watchers"

EVENTS: tuple[str, ...] = (
    "on_start", "on_init_end", "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
    "on_batch_start", "on_batch_end", "on_step_begin", "on_step_end", "on_substep_end",
    "on_pre_optimizer_step", "on_optimizer_step", "on_evaluate", "on_predict", "on_save", "on_log",
    "on_prediction_step", "on_shutdown",
)


@runtime_checkable
class Plugin(Protocol):
    """What the bus needs of a subscriber: a name and a priority (handlers are looked up by name)."""

    name: str
    priority: int


@dataclass
class Delivery:
    """The outcome of one event for one subscriber."""

    plugin: str
    ok: bool
    result: Any = None
    error: str | None = None


@dataclass
class PluginBus:
    """Deliver events to subscribers in priority order; a subscriber that raises is logged and skipped."""

    _subscribers: list[tuple[int, int, Any]] = field(default_factory=list)
    _seq: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def subscribe(self, plugin: Any, *, priority: int | None = None) -> None:
        prio = priority if priority is not None else getattr(plugin, "priority", 500)
        if not isinstance(prio, int):
            raise PluginError(f"plugin {_name(plugin)!r} has priority {prio!r}; it must be an integer")
        self._subscribers.append((prio, self._seq, plugin))
        self._seq += 1
        self._subscribers.sort(key=lambda item: (item[0], item[1]))

    def unsubscribe(self, plugin: Any) -> None:
        self._subscribers = [s for s in self._subscribers if s[2] is not plugin]

    @property
    def subscribers(self) -> list[Any]:
        return [s[2] for s in self._subscribers]

    def emit(self, event: str, **payload: Any) -> list[Delivery]:
        """Call ``event`` on every subscriber that handles it, in priority order.

        Returns:
            One :class:`Delivery` per subscriber that handles the event.
        """
        deliveries = []
        for _, _, plugin in list(self._subscribers):
            handler = _handler(plugin, event)
            if handler is None:
                continue
            try:
                deliveries.append(Delivery(_name(plugin), True, handler(**payload)))
            except Exception as exc:
                name = _name(plugin)
                self.failures[name] = self.failures.get(name, 0) + 1
                log.exception("plugin %s raised in %s; it is skipped for this event", name, event)
                deliveries.append(Delivery(name, False, error=f"{type(exc).__name__}: {exc}"))
        return deliveries


def _name(plugin: Any) -> str:
    return str(getattr(plugin, "name", type(plugin).__name__))


def _handler(plugin: Any, event: str) -> Callable[..., Any] | None:
    handler = getattr(plugin, event, None)
    if callable(handler):
        return handler
    generic = getattr(plugin, "on_event", None)
    if callable(generic):
        return lambda **payload: generic(event, **payload)
    return None


class ConsoleCore:
    """The old toolkit's core: register plugins, compile (order + validate), start, emit, shut down."""

    def __init__(self) -> None:
        self.bus = PluginBus()
        self._registered: list[Any] = []
        self._compiled = False
        self._started = False

    @property
    def plugins(self) -> list[Any]:
        """Registered plugins, in delivery order once compiled."""
        return self.bus.subscribers if self._compiled else list(self._registered)

    def register_plugin(self, plugin: Any) -> Any:
        """Register a plugin, or an adapter (anything with ``get_legacy_plugin()``).

        Returns:
            The plugin object that will receive events.
        """
        if hasattr(plugin, "get_legacy_plugin"):
            plugin = plugin.get_legacy_plugin()
        if not hasattr(plugin, "name"):
            raise PluginError(f"{plugin!r} is not a plugin: it needs a name and on_<event> methods")
        if any(_name(p) == _name(plugin) for p in self._registered):
            raise PluginError(f"a plugin named {_name(plugin)!r} is already registered")
        self._registered.append(plugin)
        if self._compiled:
            self._validate(plugin)
            self.bus.subscribe(plugin)
        return plugin

    def compile_plugins(self) -> list[str]:
        """Validate every plugin's config and fix the delivery order.

        Returns:
            Plugin names in delivery order.

        Raises:
            ConfigError: a plugin's config is invalid (raised by the plugin's own validation).
        """
        for plugin in self._registered:
            self._validate(plugin)
        self.bus = PluginBus()
        for plugin in self._registered:
            self.bus.subscribe(plugin)
        self._compiled = True
        return [_name(p) for p in self.bus.subscribers]

    @staticmethod
    def _validate(plugin: Any) -> None:
        validate = getattr(plugin, "validate_config", None)
        if callable(validate):
            validate()

    def start(self) -> None:
        """Initialise every plugin (in order) and emit ``on_start``."""
        if not self._compiled:
            self.compile_plugins()
        for plugin in self.bus.subscribers:
            init = getattr(plugin, "initialize", None)
            if callable(init):
                try:
                    init()
                except Exception:
                    log.exception("plugin %s failed to initialise; it stays registered", _name(plugin))
        self._started = True
        self.bus.emit("on_start")

    def emit_event(self, event: str, **payload: Any) -> list[Delivery]:
        """Deliver ``event`` to every plugin that handles it."""
        if not self._compiled:
            raise PluginError("call compile_plugins() (or start()) before emit_event()")
        return self.bus.emit(event, **payload)

    def shutdown(self) -> None:
        """Emit ``on_shutdown`` and release every plugin's resources."""
        if not self._compiled:
            return
        self.bus.emit("on_shutdown")
        self._started = False


@runtime_checkable
class Watcher(Protocol):
    """What a training loop needs of a watcher beyond the bus events: its headline numbers and its report."""

    name: str
    priority: int
    report: dict[str, str] | None

    def summary(self) -> dict[str, float]: ...


def load_watcher(name: str, **settings: Any) -> Watcher:
    """The watcher an installed package offers as ``name`` (entry-point group ``aptops.watchers``), made with
    ``settings`` (``interval``, ``report_dir``).

    Raises:
        ConfigError: no installed package offers it (the message says which extra to install).
    """
    found = importlib.metadata.entry_points(group=WATCHER_GROUP, name=name)
    if not found:
        offered = sorted(ep.name for ep in importlib.metadata.entry_points(group=WATCHER_GROUP))
        raise ConfigError(f"no training watcher named {name!r} is installed (installed: {', '.join(offered) or 'none'}); "
                          f"install aptops[{name}] (or set {name}=false)", field=name)
    entry = next(iter(found))
    watcher = entry.load()(**settings)
    if not isinstance(watcher, Watcher):
        raise PluginError(f"the {name!r} watcher ({entry.value}) lacks name, priority, report or summary()")
    return watcher
