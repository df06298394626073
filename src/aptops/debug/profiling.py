"""Timing of code sections and per-layer profiles of models.

``profile_section`` times a callable (``iterations`` runs after ``warmup``), or, given a name, is a context
manager / decorator that times each entry. On a GPU it uses CUDA events, which time the kernels rather than
the launches. ``profile_model`` runs a forward pass with per-module hooks (latency, parameters) under
``torch.utils.flop_counter.FlopCounterMode`` (FLOPs per module) and records peak memory.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.debug.findings import check_interval


@dataclass
class SectionTimings:
    """Timings of one named section, in seconds."""

    name: str
    times: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        if not self.times:
            return {"calls": 0}
        ordered = sorted(self.times)
        return {"calls": len(ordered), "mean_s": statistics.fmean(ordered), "min_s": ordered[0],
                "p50_s": ordered[len(ordered) // 2], "p95_s": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                "std_s": statistics.pstdev(ordered), "total_s": sum(ordered)}


class _Timer:
    """Wall time on CPU; CUDA events (synchronised at the end) when CUDA is initialised."""

    def __init__(self) -> None:
        torch = require("torch", extra="debug", feature="debugging")
        self.cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def __enter__(self) -> _Timer:
        if self.cuda:
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.elapsed = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.elapsed = time.perf_counter() - self._t0


class ProfiledSection:
    """A named section: ``with section:`` or ``@section`` records one timing per entry or call."""

    def __init__(self, name: str) -> None:
        self.timings = SectionTimings(name)

    def __enter__(self) -> ProfiledSection:
        self._timer = _Timer().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.__exit__(*exc)
        self.timings.times.append(self._timer.elapsed)

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)
        wrapper.timings = self.timings  # type: ignore[attr-defined]
        return wrapper

    def summary(self) -> dict[str, float]:
        return self.timings.summary()


def profile_section(code_section: Callable[[], Any] | str, iterations: int = 10, warmup: int = 2) -> Any:
    """Time a section of code.

    Args:
        code_section: a callable taking no arguments (run ``warmup`` + ``iterations`` times and summarised),
            or a name (returns a :class:`ProfiledSection` for ``with`` / decorator use).
        iterations: timed runs of a callable.
        warmup: untimed runs first (caches, lazy initialisation, kernel selection).

    Returns:
        For a callable, ``{"calls", "mean_s", "min_s", "p50_s", "p95_s", "std_s", "total_s"}``; for a name,
        the section object.
    """
    if isinstance(code_section, str):
        return ProfiledSection(code_section)
    if not callable(code_section):
        raise ConfigError(f"code_section must be a callable or a section name, not {type(code_section).__name__}",
                          field="code_section")
    check_interval("iterations", iterations)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup={warmup!r} must be a whole number >= 0", field="warmup", value=warmup)
    for _ in range(warmup):
        code_section()
    section = ProfiledSection(getattr(code_section, "__name__", "section"))
    for _ in range(iterations):
        with section:
            code_section()
    return section.summary()


def profile_in_turns(sections: Mapping[str, Callable[[], Any]], iterations: int = 7,
                     warmup: int = 1) -> dict[str, dict[str, float]]:
    """Time several callables taking turns, round after round: each one's :func:`profile_section` summary.

    Timed minutes apart, the same model's median forward time moved by 20% on a shared 2-core CPU (SmolLM2-135M:
    0.28 to 0.34 s from one round to the next); in turns, a slow round slows every callable in it, so their
    ratios hold. ``warmup`` untimed calls of each come first.
    """
    check_interval("iterations", iterations)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup={warmup!r} must be a whole number >= 0", field="warmup", value=warmup)
    for _ in range(warmup):
        for fn in sections.values():
            fn()
    timed = {name: ProfiledSection(name) for name in sections}
    for _ in range(iterations):
        for name, fn in sections.items():
            with timed[name]:
                fn()
    return {name: section.summary() for name, section in timed.items()}


def transformer_flops(config: Any, batch_size: int, seq_len: int) -> float:
    """Analytic forward FLOPs of a decoder-only transformer (Kaplan et al. / Chinchilla accounting).

    Every matrix multiply costs 2 FLOPs per weight per token: attention projections (with grouped KV),
    the gated or plain MLP and the LM head; attention scores and the weighted sum cost ``4·s²·d`` per layer.
    """
    d = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    inter = getattr(config, "intermediate_size", None) or 4 * d
    gated = getattr(config, "hidden_act", "gelu") in ("silu", "swiglu") or getattr(config, "model_type", "") in (
        "llama", "mistral", "qwen2", "gemma")
    tokens = batch_size * seq_len
    attn_proj = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o + k, v
    mlp = d * inter * (3 if gated else 2)
    per_token = 2 * layers * (attn_proj + mlp) + 2 * d * config.vocab_size
    scores = 2 * 2 * layers * batch_size * seq_len * seq_len * heads * head_dim
    return float(per_token * tokens + scores)


def _example_inputs(torch: Any, model: Any, input_shape: Sequence[int], batch_size: int) -> Any:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "vocab_size", None) and len(input_shape) == 1:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, config.vocab_size, (batch_size, *input_shape), generator=gen)
        return {"input_ids": ids.to(device)}
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.randn(batch_size, *input_shape, device=device, dtype=dtype)


def profile_model(model: Any, input_shape: Sequence[int], batch_size: int = 1, *, iterations: int = 3,
                  warmup: int = 1, top: int = 30) -> dict[str, Any]:
    """Profile one forward pass: per-layer latency, parameters and FLOPs, totals and peak memory.

    Args:
        model: a ``torch.nn.Module``; a language model (``config.vocab_size``) with a one-element
            ``input_shape`` gets random token ids, anything else ``randn(batch_size, *input_shape)``.
        input_shape: the shape of one example (``(seq_len,)`` for a language model).
        batch_size: examples per forward pass.
        iterations: timed forward passes (per-layer latency is their mean).
        warmup: untimed passes first.
        top: how many layers the ``layers`` table keeps (the slowest first).

    Returns:
        ``{"latency_s", "flops", "analytic_flops" (transformers), "params", "peak_memory_bytes", "layers": [...]}``.
    """
    torch = require("torch", extra="debug", feature="model profiling")
    from torch.utils.flop_counter import FlopCounterMode

    if not input_shape or any(not isinstance(n, int) or n < 1 for n in input_shape):
        raise ConfigError(f"input_shape={tuple(input_shape)!r} must be positive whole numbers, e.g. (128,) for "
                          "128 tokens or (3, 224, 224) for an image", field="input_shape", value=input_shape)
    check_interval("batch_size", batch_size)
    check_interval("iterations", iterations)
    inputs = _example_inputs(torch, model, input_shape, batch_size)
    was_training = model.training
    model.eval()
    modules = dict(model.named_modules())
    leaf = {n: m for n, m in modules.items() if n and not list(m.children())}
    elapsed: dict[str, float] = dict.fromkeys(leaf, 0.0)
    starts: dict[str, float] = {}
    cuda = next((p.is_cuda for p in model.parameters()), False)

    def pre(name: str) -> Any:
        def hook(*_: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            starts[name] = time.perf_counter()
        return hook

    def post(name: str) -> Any:
        def hook(*_: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            elapsed[name] += time.perf_counter() - starts.pop(name, time.perf_counter())
        return hook

    def forward() -> None:
        if isinstance(inputs, dict):
            model(**inputs)
        else:
            model(inputs)

    psutil = require("psutil", extra="debug", feature="model profiling")
    rss_before = psutil.Process().memory_info().rss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        with torch.no_grad():
            for _ in range(warmup):
                forward()
            whole = profile_section(forward, iterations=iterations, warmup=0)
            handles = [m.register_forward_pre_hook(pre(n)) for n, m in leaf.items()]
            handles += [m.register_forward_hook(post(n)) for n, m in leaf.items()]
            try:
                for _ in range(iterations):
                    forward()
            finally:
                for h in handles:
                    h.remove()
            counter = FlopCounterMode(display=False)
            with counter:
                forward()
    finally:
        model.train(was_training)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else max(psutil.Process().memory_info().rss - rss_before, 0))
    flops_by_module = counter.get_flop_counts()
    root = type(model).__name__
    layers = []
    for name, m in leaf.items():
        counts = flops_by_module.get(f"{root}.{name}", {})
        layers.append({"name": name, "type": type(m).__name__, "latency_s": elapsed[name] / iterations,
                       "params": sum(p.numel() for p in m.parameters(recurse=False)),
                       "flops": int(sum(counts.values()))})
    layers.sort(key=lambda r: r["latency_s"], reverse=True)
    result: dict[str, Any] = {
        "input_shape": list(input_shape), "batch_size": batch_size, "latency_s": whole["mean_s"],
        "latency_p95_s": whole["p95_s"], "flops": int(counter.get_total_flops()),
        "params": sum(p.numel() for p in model.parameters()), "peak_memory_bytes": int(peak),
        "device": "cuda" if cuda else "cpu", "layers": layers[:top],
    }
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers") and len(input_shape) == 1:
        result["analytic_flops"] = transformer_flops(config, batch_size, input_shape[0])
    if result["latency_s"] > 0:
        result["flops_per_s"] = result["flops"] / result["latency_s"]
    return result
