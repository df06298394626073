"""Bridge Hugging Face ``Trainer`` events onto the plugin bus.

``Trainer(..., callbacks=[BusCallback(core)])`` makes every Trainer event reach the subscribed plugins
in priority order, with the old APT names too (``on_step_begin`` is also sent as ``on_batch_start``,
``on_step_end`` as ``on_batch_end``). A plugin that raises is logged by the bus and training goes on.
"""

from __future__ import annotations

from typing import Any

from aptops.core.bus import ConsoleCore, PluginBus
from aptops.core.deps import require

_transformers = require("transformers", extra="train", feature="BusCallback")

# Trainer event -> extra legacy event names sent right after it.
_ALIASES = {"on_step_begin": ("on_batch_start",), "on_step_end": ("on_batch_end",)}
_TRAINER_EVENTS = (
    "on_init_end", "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_step_begin",
    "on_pre_optimizer_step", "on_optimizer_step", "on_substep_end", "on_step_end", "on_evaluate",
    "on_predict", "on_save", "on_log", "on_prediction_step",
)


class BusCallback(_transformers.TrainerCallback):
    """A ``TrainerCallback`` that forwards each event to a :class:`PluginBus` or :class:`ConsoleCore`.

    Each event carries ``step``, ``epoch``, ``args``, ``state``, ``control`` and the Trainer's keyword
    arguments (``model``, ``logs``, ``metrics`` ...) as ``context_data``.
    """

    def __init__(self, bus: PluginBus | ConsoleCore) -> None:
        self.bus = bus.bus if isinstance(bus, ConsoleCore) else bus

    def _forward(self, event: str, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        payload = {
            "step": state.global_step, "epoch": state.epoch, "args": args, "state": state,
            "control": control, "context_data": kwargs,
        }
        for name in (event, *_ALIASES.get(event, ())):
            self.bus.emit(name, **payload)


def _make_handler(event: str) -> Any:
    def handler(self: BusCallback, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._forward(event, args, state, control, **kwargs)

    handler.__name__ = event
    return handler


for _event in _TRAINER_EVENTS:
    setattr(BusCallback, _event, _make_handler(_event))
