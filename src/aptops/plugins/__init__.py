"""The plugin bus of the old APT toolkit, kept as aptops' public API.

``get_adapter(name, config)`` / ``get_all_legacy_adapters()`` return objects with the old plugin
methods; ``ConsoleCore`` and ``PluginBus`` deliver events in priority order; ``BusCallback``
(``aptops.lm.callbacks``) bridges Hugging Face Trainer events onto the bus.
"""

from aptops.core.bus import EVENTS, ConsoleCore, Delivery, PluginBus
from aptops.plugins.legacy import (
    Adapter,
    AdapterSpec,
    LegacyPlugin,
    get_adapter,
    get_all_legacy_adapters,
    register_adapter,
)

__all__ = [
    "EVENTS", "Adapter", "AdapterSpec", "ConsoleCore", "Delivery", "LegacyPlugin", "PluginBus",
    "get_adapter", "get_all_legacy_adapters", "register_adapter",
]
