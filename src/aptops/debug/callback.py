"""The debugger as one plugin on the bus, attachable to any Hugging Face ``Trainer``.

``TrainingDebugger`` subscribes to Trainer events (through :class:`~aptops.lm.callbacks.BusCallback`):
gradient statistics before each recorded optimizer step, update-to-weight ratios after it, activation
statistics on recorded steps only (hooks are idle otherwise), memory sampled in the background, NaN/Inf
loss checks on every log, training health pushed to Prometheus, and at the end the findings and the
full report. The bus isolates it: a monitor that raises is logged and skipped, training goes on.

    callback, debugger = debug_callback(DebugConfig(report_dir="out/debug"))
    Trainer(..., callbacks=[callback]).train()
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aptops.core.config import check_interval, check_range
from aptops.core.deps import require
from aptops.debug.activations import ActivationMonitor, detect_dead_neurons, detect_saturated_neurons
from aptops.debug.diagnose import diagnose_history
from aptops.debug.findings import Finding, sort_findings
from aptops.debug.gradients import GradientMonitor, detect_gradient_anomalies
from aptops.debug.memory import MemoryTracker, detect_memory_leaks, gpu_snapshot
from aptops.debug.nan import NanInfDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DebugConfig:
    """What the training debugger watches.

    Attributes:
        log_interval: record gradients, activations and update ratios every this many optimizer steps.
        track_layers: parameter names / prefixes / globs for the gradient monitor (default: all trainable).
        activation_layers: modules to hook (default: every activation-function module).
        update_ratio_params: update-to-weight ratios for at most this many weight matrices, spread over
            depth (each needs a copy of the weights on a recorded step); 0 turns them off.
        memory_interval_s: seconds between memory samples (0: no memory tracking).
        grad_threshold: a per-parameter gradient norm above this is an explosion.
        stop_on_nan: stop training at the first non-finite loss (the report still gets written).
        trace_nan_modules: check every module's output on every step and name the first that produces
            NaN/Inf (costs a reduction per module per step; for hunting, not for every run).
        report_dir: where the report goes at the end of training (``None``: no report).
        push_interval_s: minimum seconds between Prometheus pushes (``APTOPS_PUSHGATEWAY_URL``).
    """

    log_interval: int = 10
    track_layers: tuple[str, ...] | None = None
    activation_layers: tuple[str, ...] | None = None
    update_ratio_params: int = 16
    memory_interval_s: float = 1.0
    grad_threshold: float = 100.0
    stop_on_nan: bool = True
    trace_nan_modules: bool = False
    report_dir: str | None = None
    push_interval_s: float = 15.0

    def __post_init__(self) -> None:
        check_interval("log_interval", self.log_interval)
        check_range("memory_interval_s", self.memory_interval_s, min_value=0.0)
        check_range("update_ratio_params", self.update_ratio_params, min_value=0)
        check_range("push_interval_s", self.push_interval_s, min_value=0.0)


class TrainingDebugger:
    """A plugin (``advanced_debugging``, priority 800) holding every monitor of one training run."""

    name = "advanced_debugging"
    priority = 800

    def __init__(self, config: DebugConfig | None = None, *, pipeline: str = "train", run_id: str | None = None,
                 sink: Any = None) -> None:
        self.config = config or DebugConfig()
        self.pipeline = pipeline
        self.run_id = run_id or os.environ.get("APTOPS_RUN_ID", "local")
        self.sink = sink if sink is not None else _default_sink()
        self.gradients: GradientMonitor | None = None
        self.activations: ActivationMonitor | None = None
        self.memory: MemoryTracker | None = None
        self.training: dict[str, list[tuple[float, float]]] = {"loss": [], "eval_loss": [], "grad_norm": [],
                                                               "learning_rate": []}
        self.update_ratios: dict[str, list[float]] = {}
        self.nan_events = 0
        self.findings: list[Finding] = []
        self.report: dict[str, str] | None = None
        self._ratio_params: list[tuple[str, Any]] = []
        self._before: list[Any] | None = None
        self._last_push = 0.0
        self._metrics: Any = None
        self._loss_bad: Any = None
        self._hooks: list[Any] = []
        self.nan_detector: NanInfDetector | None = None

    # --- Trainer events (delivered by the bus) ---
    def on_train_begin(self, *, context_data: Mapping[str, Any], **_: Any) -> None:
        model = context_data["model"]
        cfg = self.config
        self.gradients = GradientMonitor(model, log_interval=1, track_layers=cfg.track_layers)
        self.gradients.watch_backward()  # unclipped statistics: the Trainer clips before callbacks run
        self.activations = ActivationMonitor(model, cfg.activation_layers)
        self.activations.enabled = False
        matrices = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() == 2]
        if cfg.update_ratio_params and matrices:
            stride = max(1, len(matrices) // cfg.update_ratio_params)
            self._ratio_params = matrices[::stride][:cfg.update_ratio_params]
        # the loss of every forward pass, checked without a host sync until the step ends (the Trainer's
        # logging_nan_inf_filter hides non-finite losses from the logs, so they are caught here)
        self._hooks.append(model.register_forward_hook(self._watch_loss))
        if cfg.trace_nan_modules:
            self.nan_detector = NanInfDetector(model)
        if cfg.memory_interval_s > 0:
            device = next((p.device for p in model.parameters()), None)
            self.memory = MemoryTracker(device=f"cuda:{device.index or 0}" if device is not None and device.type == "cuda"
                                        else "cpu", interval=cfg.memory_interval_s, track_objects=False).start()

    def _watch_loss(self, module: Any, inputs: Any, output: Any) -> None:
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if loss is None or not hasattr(loss, "isfinite"):
            return
        bad = ~loss.detach().isfinite().all()
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad

    def on_step_end(self, *, step: int, control: Any, **_: Any) -> None:
        if self._loss_bad is not None and bool(self._loss_bad):
            self._nonfinite(step, control, "training loss")
        self._loss_bad = None

    def _nonfinite(self, step: int, control: Any, what: str, value: float = math.nan) -> None:
        self.nan_events += 1
        where = self.nan_detector.first if self.nan_detector is not None else None
        if self.nan_events == 1:
            self.findings.append(Finding(
                "nonfinite_loss", "critical",
                f"the {what} became NaN/Inf at step {step}" + (f", first produced by module {where}" if where else ""),
                ("inspect that module's weights and inputs; " if where else
                 "rerun with trace_nan_modules=True (or aptops debug diagnose) to name the module that produces it; ")
                + "lower the learning rate, enable gradient clipping (max_grad_norm=1.0), use bf16 rather than fp16",
                where=where or "", step=step, value=value))
        if self.config.stop_on_nan and not control.should_training_stop:
            control.should_training_stop = True
            log.error("non-finite %s at step %d: training stopped (stop_on_nan)", what, step)
        self._push(force=True)

    def _recording(self, step: int) -> bool:
        return step % self.config.log_interval == 0

    def on_step_begin(self, *, step: int, **_: Any) -> None:
        recording = self._recording(step)
        if self.activations is not None:
            self.activations.enabled = recording
        if self.gradients is not None:
            self.gradients.capturing = recording

    def on_pre_optimizer_step(self, *, step: int, **_: Any) -> None:
        if self.gradients is None or not self._recording(step):
            return
        if self.activations is not None:
            self.activations.enabled = False  # the forward passes of this step are done
        self.gradients.capturing = False
        self.gradients.step(step)
        if self._ratio_params:
            self._before = [p.detach().clone() for _, p in self._ratio_params]

    def on_optimizer_step(self, **_: Any) -> None:
        if self._before is None:
            return
        torch = require("torch", extra="debug", feature="training debugger")
        with torch.no_grad():
            for (name, p), old in zip(self._ratio_params, self._before, strict=True):
                denom = float(old.norm())
                if denom > 0:
                    self.update_ratios.setdefault(name, []).append(float((p.detach() - old).norm()) / denom)
        self._before = None

    def on_log(self, *, step: int, control: Any, context_data: Mapping[str, Any], **_: Any) -> None:
        logs = context_data.get("logs") or {}
        for key in self.training:
            if key in logs and isinstance(logs[key], int | float):
                self.training[key].append((float(step), float(logs[key])))
        loss = logs.get("eval_loss")
        if isinstance(loss, int | float) and not math.isfinite(loss):
            self._nonfinite(step, control, "evaluation loss", float(loss))
        self._push(force=False)

    def on_train_end(self, *, state: Any = None, **_: Any) -> None:
        if self.memory is not None:
            self.memory.stop()
        if self.activations is not None:
            self.activations.remove()
        if self.gradients is not None:
            self.gradients.remove()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self.nan_detector is not None:
            self.nan_detector.remove()
        self.findings = self._all_findings()
        self._push(force=True)
        if self.config.report_dir and getattr(state, "is_world_process_zero", True):
            from aptops.debug.visualize import generate_full_report

            self.report = generate_full_report(self.stats(), self.config.report_dir, title="aptops training debug report")
            log.info("debug report: %s", self.report["html"])

    # --- results ---
    def _all_findings(self) -> list[Finding]:
        found = list(self.findings)
        history = [{"step": s, "loss": v} for s, v in self.training["loss"]]
        history += [{"step": s, "eval_loss": v} for s, v in self.training["eval_loss"]]
        history += [{"step": s, "grad_norm": v} for s, v in self.training["grad_norm"]]
        found += [f for f in diagnose_history(history, grad_threshold=self.config.grad_threshold)
                  if f.kind != "nonfinite_loss" or not any(g.kind == "nonfinite_loss" for g in found)]
        if self.gradients is not None:
            found += detect_gradient_anomalies(self.gradients, threshold=self.config.grad_threshold)
        if self.activations is not None:
            found += detect_dead_neurons(self.activations)["findings"]
            found += detect_saturated_neurons(self.activations)["findings"]
        if self.memory is not None:
            found += detect_memory_leaks(self.memory, warmup=0.25).findings
        # the logged global norm and the per-layer monitor see the same explosion: keep the finding that names a layer
        located = any(f.kind == "exploding_gradients" and f.where for f in found)
        return sort_findings([f for f in found if not (located and f.kind == "exploding_gradients" and not f.where)])

    def summary(self) -> dict[str, float]:
        """Headline numbers (they go into the training metrics and Prometheus)."""
        out: dict[str, float] = {"debug_nan_events": float(self.nan_events)}
        if self.gradients is not None and self.gradients.history:
            norms = [r.total_norm for r in self.gradients.history if math.isfinite(r.total_norm)]
            if norms:
                out["debug_max_grad_norm"] = max(norms)
        if self.activations is not None:
            out["debug_dead_neuron_ratio"] = detect_dead_neurons(self.activations)["dead_ratio"]
        if self.memory is not None:
            out["debug_peak_memory_bytes"] = float(self.memory.peak)
        if self.update_ratios:
            ratios = sorted(sum(v) / len(v) for v in self.update_ratios.values())
            out["debug_median_update_ratio"] = ratios[len(ratios) // 2]
        out["debug_findings_critical"] = float(sum(f.severity == "critical" for f in self.findings))
        return out

    def stats(self) -> dict[str, Any]:
        """Everything for :func:`~aptops.debug.visualize.generate_full_report`."""
        return {
            "summary": self.summary(), "findings": self.findings, "gradients": self.gradients,
            "activations": self.activations.summary() if self.activations else {},
            "dead_neurons": ({k: v for k, v in detect_dead_neurons(self.activations).items() if k != "findings"}
                             if self.activations else {}),
            "memory": self.memory, "training": self.training,
            "update_ratios": {n: sum(v) / len(v) for n, v in self.update_ratios.items()}, "gpu": gpu_snapshot(),
        }

    def _push(self, *, force: bool) -> None:
        if self.sink is None:
            return
        now = time.monotonic()
        if not force and now - self._last_push < self.config.push_interval_s:
            return
        from aptops.core.metrics import StageMetrics

        self._last_push = now
        if self._metrics is None:
            self._metrics = StageMetrics(pipeline=self.pipeline, run_id=self.run_id, stage="debug", step="train")
        m = self._metrics
        for key, metric in (("loss", "loss"), ("grad_norm", "grad_norm"), ("learning_rate", "learning_rate")):
            if self.training[key]:
                m.gauge(metric, self.training[key][-1][1])
        summary = self.summary()
        m.gauge("nan_events", summary["debug_nan_events"], doc="Non-finite losses seen in this run.")
        if "debug_dead_neuron_ratio" in summary:
            m.gauge("dead_neuron_ratio", summary["debug_dead_neuron_ratio"], doc="Share of units never active.")
        if self.memory is not None and self.memory.history:
            m.gauge("memory_bytes", self.memory.history[-1][1], doc="Process RSS or GPU memory allocated.")
        m.gauge("last_update_timestamp_seconds", time.time(), doc="When the run last reported (stall alerts).")
        try:
            self.sink.emit(m.registry, job=f"aptops-{self.pipeline}", run_id=self.run_id, stage="debug", step="train")
        except OSError as exc:
            log.warning("could not push training health: %s", exc)


def _default_sink() -> Any:
    url = os.environ.get("APTOPS_PUSHGATEWAY_URL", "").strip()
    if not url:
        return None
    from aptops.core.metrics import PushgatewaySink

    return PushgatewaySink(url)


def debug_callback(config: DebugConfig | None = None, *, bus: Any = None, **kwargs: Any) -> tuple[Any, TrainingDebugger]:
    """A Trainer callback with a :class:`TrainingDebugger` on its bus: ``(callback, debugger)``.

    Args:
        config: what to watch; ``report_dir`` set writes the report at the end of training.
        bus: an existing ``PluginBus`` to join (the debugger is subscribed to it).
        kwargs: passed to :class:`TrainingDebugger` (``pipeline``, ``run_id``, ``sink``).
    """
    from aptops.core.bus import PluginBus
    from aptops.lm.callbacks import BusCallback

    debugger = TrainingDebugger(config, **kwargs)
    bus = bus if bus is not None else PluginBus()
    bus.subscribe(debugger)
    return BusCallback(bus), debugger


def watcher(*, interval: int = 10, report_dir: str | Path | None = None, **kwargs: Any) -> TrainingDebugger:
    """The ``debug`` watcher training runs load by name (entry-point group ``aptops.watchers``): a
    :class:`TrainingDebugger` recording every ``interval`` optimizer steps, its report written to ``report_dir``."""
    return TrainingDebugger(DebugConfig(log_interval=interval, report_dir=str(report_dir) if report_dir else None),
                            **kwargs)


def report_dir_for(output_dir: str | Path) -> str:
    """Where a stage keeps its debug report: ``<output>/debug``."""
    return str(Path(output_dir) / "debug")
