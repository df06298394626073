"""Find where NaN or Inf first appears: in a set of tensors, or in a model's forward pass.

``detect_nan_inf(model)`` hooks every module; the first module (in execution order) whose output holds a
non-finite value while its inputs were finite is the one that *produced* it, which is what a person
debugging a diverging run needs — not the loss, which is merely where it ends up.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import AptopsError


class NonFiniteError(AptopsError, FloatingPointError):
    """A NaN or Inf appeared; ``where`` names the tensor or module that produced it."""

    def __init__(self, message: str, *, where: str) -> None:
        super().__init__(message)
        self.where = where


def _tensors(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if hasattr(obj, "isfinite") and hasattr(obj, "is_floating_point"):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")
    elif hasattr(obj, "to_tuple"):  # transformers ModelOutput
        yield from _tensors(dict(obj.items()), prefix)


def _count_bad(t: Any) -> tuple[int, int]:
    torch = require("torch", extra="debug", feature="NaN detection")
    d = t.detach()
    return int(torch.isnan(d).sum()), int(torch.isinf(d).sum())


@dataclass
class NanInfDetector:
    """Forward hooks on every module of a model that record the first module producing NaN/Inf.

    Attributes:
        first: the name of the first producing module, or ``None``.
        events: every ``(module, nan_count, inf_count)`` seen, in order (at most ``max_events``).
    """

    model: Any
    raise_error: bool = False
    max_events: int = 50
    first: str | None = None
    events: list[tuple[str, int, int]] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_hook(self._hook(name or type(self.model).__name__)))

    def _hook(self, name: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            bad_out = [(n, *_count_bad(t)) for n, t in _tensors(output, "") if not bool(t.isfinite().all())]
            if not bad_out:
                return
            inputs_bad = any(not bool(t.isfinite().all()) for _, t in _tensors(inputs, ""))
            nan = sum(b[1] for b in bad_out)
            inf = sum(b[2] for b in bad_out)
            if len(self.events) < self.max_events:
                self.events.append((name, nan, inf))
            if self.first is None and not inputs_bad:
                self.first = name
                if self.raise_error:
                    raise NonFiniteError(
                        f"module {name} ({type(module).__name__}) produced {nan} NaN and {inf} Inf values from "
                        "finite inputs; inspect its weights and inputs, lower the learning rate, or compute it in "
                        "float32", where=name)
        return hook

    def reset(self) -> None:
        self.first = None
        self.events.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> NanInfDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def detect_nan_inf(tensors: Any, raise_error: bool = False) -> Any:
    """Look for NaN/Inf in tensors, or watch a model for the module that produces them.

    Args:
        tensors: a tensor, a mapping / sequence of tensors (a batch, model outputs, a state dict), or a
            ``torch.nn.Module`` (then a :class:`NanInfDetector` is returned, to use around forward passes).
        raise_error: raise :class:`NonFiniteError` at the first non-finite value (stops training).

    Returns:
        For tensors: ``[{"name", "nan", "inf", "numel"}]`` for each tensor holding non-finite values
        (empty when all are finite). For a module: the attached detector.
    """
    torch = require("torch", extra="debug", feature="NaN detection")
    if isinstance(tensors, torch.nn.Module):
        return NanInfDetector(tensors, raise_error=raise_error)
    found = []
    for name, t in _tensors(tensors, ""):
        if bool(t.isfinite().all()):
            continue
        nan, inf = _count_bad(t)
        found.append({"name": name or "tensor", "nan": nan, "inf": inf, "numel": int(t.numel())})
        if raise_error:
            raise NonFiniteError(f"{name or 'tensor'} holds {nan} NaN and {inf} Inf values of {t.numel()}",
                                 where=name or "tensor")
    return found
