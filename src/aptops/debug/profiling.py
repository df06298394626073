"""Per-layer profiles of models (timing of code sections is :mod:`aptops.lm.measure`'s, re-exported here).

``profile_model`` runs a forward pass with per-module hooks (latency, parameters) under
``torch.utils.flop_counter.FlopCounterMode`` (FLOPs per module) and records peak memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aptops.core.config import check_interval
from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.lm.measure import ProfiledSection, SectionTimings, profile_in_turns, profile_section

__all__ = ["ProfiledSection", "SectionTimings", "profile_in_turns", "profile_model", "profile_section", "transformer_flops"]


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
    leaf = {n: m for n, m in model.named_modules() if n and not list(m.children())}
    cuda = next((p.is_cuda for p in model.parameters()), False)

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
            latency = layer_latencies(leaf, forward, iterations=iterations, cuda=cuda)
            counter = FlopCounterMode(display=False)
            with counter:
                forward()
    finally:
        model.train(was_training)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else max(psutil.Process().memory_info().rss - rss_before, 0))
    flops = counter.get_flop_counts()
    root = type(model).__name__
    layers = sorted(({"name": name, "type": type(m).__name__, "latency_s": latency[name],
                      "params": sum(p.numel() for p in m.parameters(recurse=False)),
                      "flops": int(sum(flops.get(f"{root}.{name}", {}).values()))} for name, m in leaf.items()),
                    key=lambda r: r["latency_s"], reverse=True)
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


def layer_latencies(leaf: Mapping[str, Any], forward: Callable[[], Any], *, iterations: int,
                    cuda: bool = False) -> dict[str, float]:
    """Mean seconds each module of ``leaf`` spends per call of ``forward`` over ``iterations`` calls, timed by
    forward hooks (CUDA synchronised around each module on a GPU, so a module owns its kernels)."""
    torch = require("torch", extra="debug", feature="model profiling")
    elapsed: dict[str, float] = dict.fromkeys(leaf, 0.0)
    starts: dict[str, float] = {}

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

    handles = [m.register_forward_pre_hook(pre(n)) for n, m in leaf.items()]
    handles += [m.register_forward_hook(post(n)) for n, m in leaf.items()]
    try:
        for _ in range(iterations):
            forward()
    finally:
        for h in handles:
            h.remove()
    return {name: total / iterations for name, total in elapsed.items()}
