"""Diagnose a training setup: run a short, instrumented training and read what went wrong from it.

``diagnose_training`` trains a copy of the run for a few steps (the weights are restored afterwards) and
measures what a person would look at: the loss (NaN/Inf, and which module produced it), update-to-weight
ratios (the learning rate's real effect, per parameter), the share of step time spent waiting for data,
gradient anomalies, and the train/validation curves (over- and under-fitting). ``diagnose_history`` reads
the same curve findings from a Hugging Face ``Trainer``'s ``log_history``. Every finding carries a fix.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aptops.core.config import check_interval, check_range
from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.debug.activations import run_model
from aptops.debug.findings import Finding, sort_findings
from aptops.debug.gradients import GradientMonitor, detect_gradient_anomalies
from aptops.debug.nan import NanInfDetector

Point = tuple[float, float]


@dataclass(frozen=True, kw_only=True)
class DiagnoseConfig:
    """Settings of :func:`diagnose_training`.

    Attributes:
        steps: optimizer steps of the diagnostic run.
        learning_rate: the learning rate under test.
        optimizer: ``adamw`` or ``sgd``.
        weight_decay: passed to the optimizer.
        eval_every: validate every this many steps.
        max_val_batches: validation batches per evaluation.
        update_ratio_high: a median ``|Δw|/|w|`` above this means the learning rate is too high (~1e-3 is healthy).
        update_ratio_low: below this, too low.
        data_wait_share: a larger share of step time spent waiting for the next batch is a data bottleneck.
        grad_threshold: a per-parameter gradient norm above this is an explosion.
        restore_weights: put the original weights back after the run.
    """

    steps: int = 30
    learning_rate: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    eval_every: int = 10
    max_val_batches: int = 8
    update_ratio_high: float = 1e-2
    update_ratio_low: float = 1e-6
    data_wait_share: float = 0.3
    grad_threshold: float = 100.0
    restore_weights: bool = True

    def __post_init__(self) -> None:
        check_interval("steps", self.steps)
        check_interval("eval_every", self.eval_every)
        check_interval("max_val_batches", self.max_val_batches)
        check_range("learning_rate", self.learning_rate, min_value=0.0, min_inclusive=False)
        check_range("data_wait_share", self.data_wait_share, min_value=0.0, max_value=1.0)
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer={self.optimizer!r} is not supported: choose adamw or sgd",
                              field="optimizer", value=self.optimizer)
        if not self.update_ratio_low < self.update_ratio_high:
            raise ConfigError("update_ratio_low must be below update_ratio_high", field="update_ratio_low",
                              value=self.update_ratio_low)


def compute_loss(model: Any, batch: Any, loss_fn: Callable[..., Any] | None = None) -> Any:
    """The loss of one batch: ``outputs.loss`` for Hugging Face models given labels, else ``loss_fn(out, y)``."""
    torch = require("torch", extra="debug", feature="training diagnosis")
    out = run_model(model, batch)
    if isinstance(batch, Mapping) and loss_fn is None:
        loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is None:
            raise ConfigError("the model returned no loss for a dict batch: include 'labels' in the batch or pass "
                              "loss_fn", field="loss_fn")
        return loss
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        logits = out.logits if hasattr(out, "logits") else out
        target = batch[1].to(logits.device)
        return (loss_fn or torch.nn.functional.cross_entropy)(logits, target)
    raise ConfigError("batches must be dicts with labels (Hugging Face style) or (inputs, targets) pairs",
                      field="train_loader")


def _cycle(loader: Iterable[Any]) -> Iterable[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ConfigError("the training data loader yields no batch", field="train_loader")


def curve_findings(train: Sequence[Point], val: Sequence[Point]) -> list[Finding]:
    """Findings from loss curves alone: non-finite loss, divergence, over- and under-fitting, plateaus."""
    findings: list[Finding] = []
    bad = [(s, v) for s, v in train if not math.isfinite(v)]
    if bad:
        findings.append(Finding(
            "nonfinite_loss", "critical", f"the training loss became {bad[0][1]} at step {int(bad[0][0])}",
            "lower the learning rate, enable gradient clipping (max_grad_norm=1.0), use bf16 rather than fp16, "
            "and locate the producing module with detect_nan_inf(model)", step=int(bad[0][0]), value=bad[0][1]))
    good = [(s, v) for s, v in train if math.isfinite(v)]
    if len(good) >= 4:
        k = max(1, len(good) // 4)
        first = statistics.fmean(v for _, v in good[:k])
        last = statistics.fmean(v for _, v in good[-k:])
        if last > first * 1.5:
            findings.append(Finding(
                "diverging", "critical", f"the training loss rose from {first:.3g} to {last:.3g}",
                "the learning rate is too high: divide it by 3-10, add warmup, enable gradient clipping",
                value=last / first))
        elif first > 0 and (first - last) / first < 0.01:
            findings.append(Finding(
                "loss_plateau", "warning", f"the training loss barely moved ({first:.4g} -> {last:.4g})",
                "the learning rate may be too low or the model frozen: check requires_grad, raise the learning rate "
                "3-10x, or check that labels match the inputs", value=(first - last) / first))
    vgood = [(s, v) for s, v in val if math.isfinite(v)]
    if len(vgood) >= 3 and len(good) >= 2:
        best_i = min(range(len(vgood)), key=lambda i: vgood[i][1])
        best, final = vgood[best_i][1], vgood[-1][1]
        train_after = [v for s, v in good if s >= vgood[best_i][0]]
        if best_i < len(vgood) - 1 and final > best * 1.05 and train_after and train_after[-1] < train_after[0]:
            findings.append(Finding(
                "overfitting", "warning",
                f"validation loss rose from its best {best:.4g} (step {int(vgood[best_i][0])}) to {final:.4g} while "
                "the training loss kept falling",
                "stop earlier (early_stopping_patience), add data or augmentation, raise weight decay or dropout, "
                "or use a smaller model / LoRA", step=int(vgood[best_i][0]), value=final / best))
        half = [v for _, v in good[len(good) // 2:]]
        flat = half[0] > 0 and (half[0] - half[-1]) / half[0] < 0.02
        close = abs(vgood[-1][1] - good[-1][1]) < 0.05 * max(good[-1][1], 1e-9)
        if flat and close and not any(f.kind in ("loss_plateau", "diverging") for f in findings):
            findings.append(Finding(
                "underfitting", "info",
                f"the loss flattened at {good[-1][1]:.4g} with validation at {vgood[-1][1]:.4g}: the model fits the "
                "training data no better than unseen data",
                "train longer or with a higher learning rate, reduce regularisation (weight decay, dropout), or use "
                "a larger model / higher LoRA rank", value=good[-1][1]))
    return findings


@dataclass
class Diagnosis:
    """What :func:`diagnose_training` measured and concluded."""

    findings: list[Finding]
    train_loss: list[Point] = field(default_factory=list)
    val_loss: list[Point] = field(default_factory=list)
    update_ratios: dict[str, float] = field(default_factory=dict)
    data_wait_share: float = 0.0
    step_time_s: float = 0.0
    nan_module: str | None = None
    gradients: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"findings": [f.to_dict() for f in self.findings], "train_loss": self.train_loss,
                "val_loss": self.val_loss, "update_ratios": self.update_ratios,
                "data_wait_share": self.data_wait_share, "step_time_s": self.step_time_s,
                "nan_module": self.nan_module, "gradients": self.gradients}


def _val_loss(model: Any, loader: Iterable[Any], max_batches: int, loss_fn: Any) -> float:
    torch = require("torch", extra="debug", feature="training diagnosis")
    model.eval()
    losses = []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            losses.append(float(compute_loss(model, batch, loss_fn)))
    model.train()
    return statistics.fmean(losses) if losses else math.nan


def _locate_nonfinite(model: Any, batch: Any, loss_fn: Callable[..., Any] | None, step: int,
                      value: float) -> tuple[str | None, Finding]:
    """The module that first produces a NaN/Inf on ``batch`` (run again under :class:`NanInfDetector`), and the
    critical finding that names it."""
    torch = require("torch", extra="debug", feature="training diagnosis")
    with NanInfDetector(model) as det, torch.no_grad():
        compute_loss(model, batch, loss_fn)
    where = f" first produced by module {det.first}" if det.first else ""
    return det.first, Finding(
        "nonfinite_loss", "critical", f"the loss is {value} at step {step}{where}",
        "inspect that module's weights and inputs; lower the learning rate, clip gradients "
        "(max_grad_norm=1.0), or run it in float32", where=det.first or "", step=step, value=value)


def step_findings(result: Diagnosis, cfg: DiagnoseConfig) -> list[Finding]:
    """What the steps themselves say: a learning rate too high or too low (how much each step moves the weights,
    relative to their norm; about 1e-3 is healthy), and a data loader the steps wait on."""
    findings = []
    if result.update_ratios:
        median = statistics.median(result.update_ratios.values())
        if median > cfg.update_ratio_high:
            findings.append(Finding(
                "learning_rate_too_high", "warning",
                f"each step changes the weights by {median:.2e} of their norm (median over {len(result.update_ratios)} "
                f"matrices; about 1e-3 is healthy)",
                f"lower the learning rate from {cfg.learning_rate:g} to about {cfg.learning_rate * 1e-3 / median:.2g}",
                value=median))
        elif median < cfg.update_ratio_low:
            findings.append(Finding(
                "learning_rate_too_low", "warning",
                f"each step changes the weights by only {median:.2e} of their norm (about 1e-3 is healthy)",
                f"raise the learning rate from {cfg.learning_rate:g} towards {cfg.learning_rate * 1e-3 / median:.2g}, "
                "or check that the optimizer sees the parameters", value=median))
    if result.data_wait_share > cfg.data_wait_share:
        findings.append(Finding(
            "data_bottleneck", "warning",
            f"{result.data_wait_share:.0%} of each step is spent waiting for the next batch",
            "use DataLoader(num_workers=N, pin_memory=True, prefetch_factor=2), tokenize ahead of time "
            "(datasets.map), and keep the data on local disk", where="data loader", value=result.data_wait_share))
    return findings


def diagnose_training(model: Any, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None,
                      config: DiagnoseConfig | Mapping[str, Any] | None = None, *,
                      loss_fn: Callable[..., Any] | None = None) -> Diagnosis:
    """Run a short instrumented training and report what is wrong with it, each finding with a fix.

    Args:
        model: a ``torch.nn.Module`` (Hugging Face models take dict batches with ``labels``).
        train_loader: batches: dicts, or ``(inputs, targets)`` pairs with ``loss_fn`` (default cross-entropy).
        val_loader: validation batches, for the over/under-fitting checks.
        config: a :class:`DiagnoseConfig` or a mapping of its fields.
        loss_fn: the loss for ``(inputs, targets)`` batches.

    Returns:
        A :class:`Diagnosis`; its findings are sorted, the critical first.
    """
    torch = require("torch", extra="debug", feature="training diagnosis")
    cfg = config if isinstance(config, DiagnoseConfig) else DiagnoseConfig(**dict(config or {}))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameter (all requires_grad=False): nothing to diagnose",
                          field="model")
    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if cfg.restore_weights else None
    opt = (torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw"
           else torch.optim.SGD(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    grads = GradientMonitor(model, log_interval=1, history_size=cfg.steps)
    result = Diagnosis(findings=[])
    ratios: dict[str, list[float]] = {}
    data_time = total_time = 0.0
    batches = iter(_cycle(train_loader))
    model.train()
    try:
        for step in range(cfg.steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            loss = compute_loss(model, batch, loss_fn)
            value = float(loss.detach())
            result.train_loss.append((step, value))
            if not math.isfinite(value):
                result.nan_module, finding = _locate_nonfinite(model, batch, loss_fn, step, value)
                result.findings.append(finding)
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads.step(step)
            before = [p.detach().clone() for _, p in named]
            opt.step()
            with torch.no_grad():
                for (name, p), old in zip(named, before, strict=True):
                    denom = float(old.norm())
                    if denom > 0:
                        ratios.setdefault(name, []).append(float((p.detach() - old).norm()) / denom)
            t2 = time.perf_counter()
            data_time += t1 - t0
            total_time += t2 - t0
            if val_loader is not None and ((step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1):
                result.val_loss.append((step, _val_loss(model, val_loader, cfg.max_val_batches, loss_fn)))
    finally:
        if saved is not None:
            model.load_state_dict(saved)
        opt.zero_grad(set_to_none=True)
    result.update_ratios = {n: statistics.median(v) for n, v in ratios.items() if v}
    result.data_wait_share = data_time / total_time if total_time else 0.0
    result.step_time_s = total_time / max(len(result.train_loss), 1)
    result.gradients = grads.to_dict()
    findings = [f for f in curve_findings(result.train_loss, result.val_loss)
                if not (f.kind == "nonfinite_loss" and result.nan_module is not None)]
    findings += result.findings + detect_gradient_anomalies(grads, threshold=cfg.grad_threshold)
    findings += step_findings(result, cfg)
    result.findings = sort_findings(findings)
    return result


def diagnose_history(log_history: Sequence[Mapping[str, Any]], *, grad_threshold: float = 100.0) -> list[Finding]:
    """The curve findings of a Hugging Face ``Trainer`` run, from ``trainer.state.log_history``."""
    train = [(float(e["step"]), float(e["loss"])) for e in log_history if "loss" in e and "step" in e]
    val = [(float(e["step"]), float(e["eval_loss"])) for e in log_history if "eval_loss" in e and "step" in e]
    findings = curve_findings(train, val)
    norms = [(int(e["step"]), float(e["grad_norm"])) for e in log_history if "grad_norm" in e and "step" in e]
    spikes = [(s, g) for s, g in norms if not math.isfinite(g) or g > grad_threshold]
    if spikes:
        s, g = spikes[0]
        findings.append(Finding(
            "exploding_gradients", "critical",
            f"the global gradient norm reached {g:.3g} at step {s} ({len(spikes)} logged steps above {grad_threshold:g})",
            "enable gradient clipping (max_grad_norm=1.0), lower the learning rate or lengthen warmup", step=s, value=g))
    return sort_findings(findings)
