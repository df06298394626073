"""Per-layer gradient statistics during training, and the anomalies they reveal.

``monitor_gradients(model)`` returns a :class:`GradientMonitor`; call :meth:`GradientMonitor.step` after
``backward()`` (the Trainer callback does it before each optimizer step). Every ``log_interval`` steps it
records, for each tracked parameter, the mean, standard deviation and L2 norm of its gradient, in two
fused reductions (``torch._foreach_norm`` and one mean per tensor) and a single device-to-host copy, so a
step that is not recorded costs nothing and one that is costs a few kernels.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aptops.core.config import check_interval, check_range
from aptops.core.deps import require
from aptops.debug.findings import Finding, select_names

_DEPTH = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class GradStats:
    """Gradient statistics of one parameter at one step."""

    mean: float
    std: float
    norm: float


@dataclass
class GradRecord:
    """One recorded step: per-parameter statistics and the global norm."""

    step: int
    layers: dict[str, GradStats]
    total_norm: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "total_norm": self.total_norm,
                "layers": {k: [v.mean, v.std, v.norm] for k, v in self.layers.items()}}


@dataclass
class GradientMonitor:
    """Records gradient statistics of a model's parameters every ``log_interval`` steps.

    Attributes:
        history: the recorded steps, oldest first, at most ``history_size`` of them.
    """

    model: Any
    log_interval: int = 1
    track_layers: Sequence[str] | str | None = None
    history_size: int = 1000
    names: list[str] = field(init=False)
    history: deque[GradRecord] = field(init=False)
    _params: list[Any] = field(init=False, repr=False)
    _calls: int = field(default=0, init=False)
    capturing: bool = field(default=False, init=False)
    _captured: dict[int, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)
    _hooks: list[Any] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        check_interval("log_interval", self.log_interval)
        check_interval("history_size", self.history_size)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        by_name = dict(named)
        self.names = select_names(list(by_name), self.track_layers, what="parameter")
        self._params = [by_name[n] for n in self.names]
        self.history = deque(maxlen=self.history_size)

    def watch_backward(self) -> None:
        """Take the statistics inside ``backward()`` (a post-accumulate-grad hook per parameter) while
        :attr:`capturing` is on, instead of reading ``.grad`` later.

        The Trainer clips gradients in place before any callback sees them; statistics captured here are
        the unclipped ones, so an exploding layer shows its real norm. With gradient accumulation the last
        micro-batch's capture (the full accumulated gradient) wins. Costs nothing while not capturing.
        """
        if self._hooks:
            return
        torch = require("torch", extra="debug", feature="gradient monitoring")

        def make(i: int) -> Any:
            def hook(p: Any) -> None:
                if self.capturing and p.grad is not None:
                    g = p.grad.detach()
                    self._captured[i] = (torch.linalg.vector_norm(g.float()), g.float().mean())
            return hook

        self._hooks = [p.register_post_accumulate_grad_hook(make(i)) for i, p in enumerate(self._params)]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def step(self, step: int | None = None) -> GradRecord | None:
        """Record the current gradients if this call falls on the interval.

        Args:
            step: the optimizer step to file the record under (default: the number of calls so far).

        Returns:
            The new record, or ``None`` when this step is not recorded or no parameter has a gradient.
        """
        torch = require("torch", extra="debug", feature="gradient monitoring")
        index = self._calls if step is None else step
        self._calls += 1
        if index % self.log_interval:
            return None
        if self._captured:
            return self._record_captured(torch, index)
        pairs = [(n, p.grad) for n, p in zip(self.names, self._params, strict=True) if p.grad is not None]
        if not pairs:
            return None
        grads = [g.detach() for _, g in pairs]
        if any(g.is_sparse for g in grads):
            grads = [g.coalesce().values() if g.is_sparse else g for g in grads]
        with torch.no_grad():
            try:
                norms = torch._foreach_norm(grads)
            except (AttributeError, RuntimeError):  # older builds, mixed devices
                norms = [torch.linalg.vector_norm(g) for g in grads]
            device = grads[0].device
            norms_t = torch.stack([n.float().to(device) for n in norms])
            means_t = torch.stack([g.float().mean().to(device) for g in grads])
            both = torch.stack([norms_t, means_t]).cpu().tolist()
        return self._append(index, [(name, g.numel()) for name, g in pairs], both[0], both[1])

    def _record_captured(self, torch: Any, index: int) -> GradRecord:
        keys = sorted(self._captured)
        with torch.no_grad():
            values = torch.stack([torch.stack([self._captured[i][0], self._captured[i][1]]).cpu() for i in keys]).tolist()
        self._captured.clear()
        sizes = [(self.names[i], self._params[i].numel()) for i in keys]
        return self._append(index, sizes, [v[0] for v in values], [v[1] for v in values])

    def _append(self, index: int, sizes: list[tuple[str, int]], norms: list[float], means: list[float]) -> GradRecord:
        layers: dict[str, GradStats] = {}
        for (name, numel), norm, mean in zip(sizes, norms, means, strict=True):
            n = max(numel, 1)
            var = norm * norm / n - mean * mean if math.isfinite(norm) else math.nan
            layers[name] = GradStats(mean=mean, std=math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.nan,
                                     norm=norm)
        total = math.sqrt(sum(s.norm ** 2 for s in layers.values()))
        record = GradRecord(step=index, layers=layers, total_norm=total)
        self.history.append(record)
        return record

    def flow(self) -> list[tuple[str, float]]:
        """Mean gradient norm per parameter across the history, in model order (input to output)."""
        sums: dict[str, list[float]] = {}
        for record in self.history:
            for name, s in record.layers.items():
                sums.setdefault(name, []).append(s.norm)
        return [(n, sum(v) / len(v)) for n in self.names if (v := sums.get(n))]

    def depth_flow(self) -> list[tuple[int, float]]:
        """Mean gradient norm per block index (``layers.<i>.``): how the signal fades or grows with depth."""
        return depth_profile(self.flow())

    def to_dict(self) -> dict[str, Any]:
        return {"log_interval": self.log_interval, "names": self.names,
                "history": [r.to_dict() for r in self.history]}


def monitor_gradients(model: Any, log_interval: int = 10, track_layers: Sequence[str] | str | None = None, *,
                      history_size: int = 1000) -> GradientMonitor:
    """Watch the gradients of ``model``'s trainable parameters.

    Args:
        model: any ``torch.nn.Module``.
        log_interval: record every this many steps (>= 1).
        track_layers: parameter names, module prefixes or globs to watch (default: every trainable one).
        history_size: the records kept (older ones are dropped).

    Returns:
        The monitor; call ``monitor.step()`` after each ``backward()``.
    """
    return GradientMonitor(model, log_interval=log_interval, track_layers=track_layers, history_size=history_size)


def depth_profile(flow: Iterable[tuple[str, float]]) -> list[tuple[int, float]]:
    """Group ``(name, norm)`` pairs by the first block index in the name and average them."""
    groups: dict[int, list[float]] = {}
    for name, norm in flow:
        m = _DEPTH.search(name)
        if m and math.isfinite(norm):
            groups.setdefault(int(m.group(1)), []).append(norm)
    return [(d, sum(v) / len(v)) for d, v in sorted(groups.items())]


def _records(gradients: Any) -> list[GradRecord]:
    if isinstance(gradients, GradientMonitor):
        return list(gradients.history)
    if isinstance(gradients, GradRecord):
        return [gradients]
    if isinstance(gradients, Mapping):  # one step: {name: GradStats | norm}
        layers = {k: v if isinstance(v, GradStats) else GradStats(0.0, 0.0, float(v)) for k, v in gradients.items()}
        return [GradRecord(step=0, layers=layers, total_norm=math.sqrt(sum(s.norm ** 2 for s in layers.values())))]
    return list(gradients)


def detect_gradient_anomalies(gradients: Any, threshold: float = 100.0, *, vanish_threshold: float = 1e-7,
                              growth_factor: float = 10.0, depth_decay: float = 1e-3) -> list[Finding]:
    """Find exploding and vanishing gradients in recorded statistics, naming the layer.

    Args:
        gradients: a :class:`GradientMonitor`, its records, or one ``{name: norm}`` mapping.
        threshold: a per-parameter L2 norm above this is an explosion.
        vanish_threshold: a norm below this (and not exactly zero: an unused parameter) is vanishing.
        growth_factor: a norm this many times its own earlier median is abnormal growth.
        depth_decay: a first block whose mean norm is this fraction of the last block's is vanishing
            across depth.

    Returns:
        The findings, the worst first; an empty list when the gradients are healthy.
    """
    check_range("threshold", threshold, min_value=0.0, min_inclusive=False)
    check_range("growth_factor", growth_factor, min_value=1.0, min_inclusive=False)
    records = _records(gradients)
    findings: list[Finding] = []
    if not records:
        return findings
    last = records[-1]
    for name, s in last.layers.items():
        if not math.isfinite(s.norm):
            findings.append(Finding(
                "nonfinite_gradients", "critical", f"the gradient of {name} is {s.norm} at step {last.step}",
                "find the module producing NaN/Inf with detect_nan_inf(model); lower the learning rate, enable "
                "gradient clipping (max_grad_norm) or use bf16 instead of fp16", where=name, step=last.step,
                value=s.norm))
        elif s.norm > threshold:
            findings.append(Finding(
                "exploding_gradients", "critical",
                f"the gradient norm of {name} is {s.norm:.3g} at step {last.step}, above the threshold {threshold:g}",
                "enable gradient clipping (max_grad_norm=1.0), lower the learning rate or add warmup; check this "
                "layer's initialisation and the normalisation before it", where=name, step=last.step, value=s.norm))
        elif 0.0 < s.norm < vanish_threshold:
            findings.append(Finding(
                "vanishing_gradients", "warning",
                f"the gradient norm of {name} is {s.norm:.3g} at step {last.step}: it barely learns",
                "check for saturated activations or dead units before it, use residual connections and "
                "normalisation, or raise its learning rate", where=name, step=last.step, value=s.norm))
    flagged = {f.where for f in findings}
    if len(records) >= 3:
        for name, s in last.layers.items():
            earlier = sorted(r.layers[name].norm for r in records[:-1]
                             if name in r.layers and math.isfinite(r.layers[name].norm))
            if name in flagged or not earlier or not math.isfinite(s.norm):
                continue
            median = earlier[len(earlier) // 2]
            if median > 0 and s.norm > growth_factor * median:
                findings.append(Finding(
                    "gradient_growth", "warning",
                    f"the gradient norm of {name} grew {s.norm / median:.1f}x over its median ({median:.3g} -> "
                    f"{s.norm:.3g}) by step {last.step}",
                    "training may be starting to diverge: lower the learning rate or enable gradient clipping",
                    where=name, step=last.step, value=s.norm / median))
    depth = depth_profile((n, s.norm) for n, s in last.layers.items())
    if len(depth) >= 2 and depth[-1][1] > 0 and depth[0][1] / depth[-1][1] < depth_decay:
        findings.append(Finding(
            "vanishing_with_depth", "warning",
            f"block {depth[0][0]} gets {depth[0][1] / depth[-1][1]:.2e} of the gradient norm of block {depth[-1][0]}",
            "the early layers barely learn: check residual paths and normalisation, or use a shorter model",
            where=f"layers.{depth[0][0]}", step=last.step, value=depth[0][1] / depth[-1][1]))
    return findings
