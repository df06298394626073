"""Two models side by side, for every stage that compares models: held-out perplexity before and after training
(:func:`compare_models`), and what compression bought and cost (:func:`evaluate_compression`: size, speed, memory,
perplexity and agreement, original vs compressed).

``evaluate_compression`` scores both models on the same packed blocks in one pass (so perplexity and top-1
agreement come from the same tokens), times a forward pass and greedy generation on this machine, and
writes ``report.json`` and ``report.html`` (a table and a trade-off plot) into its own artifact folder; it
writes nothing else (the old plugin's ``evaluate_compression`` in :mod:`aptops.distill.legacy` also copied
the numbers into the compressed model's lineage, and still does). The distill stage's ``evaluate`` step and the train
stage's ``evaluate`` step run these.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.artifacts import (
    LINEAGE_FILE,
    StageResult,
    atomic_output,
    finish_artifact,
    read_json,
    write_json,
)
from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.lm.measure import peak_memory, profile_in_turns
from aptops.lm.scoring import EvalConfig, evaluate_perplexity

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CompressionConfig:
    """Settings of :func:`evaluate_compression`.

    Attributes:
        evaluation: how the held-out text is scored (:class:`aptops.lm.EvalConfig`: block size, text column,
            batch size, how many blocks; ``--set evaluation.block_size=128``); 64 blocks of 4 by default.
        latency_runs: timed forward passes of each model, the models taking turns (the median is reported).
        new_tokens: greedy tokens generated for the generation speed (0: skip).
        generate_runs: timed generations of each model, taking turns (the median is reported).
        gguf_type: also time generation by llama.cpp on each model exported to this GGUF type (what runs on a
            laptop); empty: not measured. It needs the export extra (llama-cpp-python), and says so without it.
    """

    evaluation: EvalConfig = field(default_factory=lambda: EvalConfig(batch_size=4, max_blocks=64))
    latency_runs: int = 5
    new_tokens: int = 32
    generate_runs: int = 3
    gguf_type: str = "Q8_0"

    def __post_init__(self) -> None:
        check_range("latency_runs", self.latency_runs, min_value=1)
        check_range("new_tokens", self.new_tokens, min_value=0)
        check_range("generate_runs", self.generate_runs, min_value=1)
        if self.gguf_type:
            check_choice("gguf_type", self.gguf_type, ("F16", "Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"))


def compression_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an :func:`evaluate_compression` result as flat metrics (``compressed_*``, ``original_*``,
    ``ratio_*``): what the component and the CLI record."""
    values = {f"compressed_{k}": float(v) for k, v in result["compressed"].items() if isinstance(v, int | float)}
    values |= {f"original_{k}": float(v) for k, v in result["original"].items() if isinstance(v, int | float)}
    return values | {f"ratio_{k}": float(v) for k, v in result["ratios"].items()}


def _disk_bytes(source: Any, model: Any) -> int:
    if isinstance(source, str | Path) and Path(source).is_dir():
        return sum(p.stat().st_size for p in Path(source).glob("*.safetensors"))
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _speeds(torch: Any, models: Mapping[str, Any], ids: Any, cfg: CompressionConfig,
            pad_id: int | None) -> dict[str, dict[str, float]]:
    """Forward time, peak forward memory and greedy generation speed of each model on this machine, the models
    taking turns (:func:`~aptops.lm.measure.profile_in_turns`), so the ratios hold on a busy machine too."""
    one = ids[:1]
    prompt = one[:, : min(16, one.shape[1])]
    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name, model in models.items():
            model(input_ids=one.to(model.device))  # warm-up, before the memory baseline
            peak = peak_memory(functools.partial(model, input_ids=one.to(model.device)))
            out[name] = {"forward_peak_rss_delta_bytes": float(peak)}
        forward = profile_in_turns({name: functools.partial(model, input_ids=one.to(model.device))
                                    for name, model in models.items()}, iterations=cfg.latency_runs, warmup=0)
        for name in models:
            forward_s = forward[name]["p50_s"]
            out[name] |= {"forward_s": forward_s, "forward_tokens_per_s": one.shape[1] / forward_s}
        if cfg.new_tokens:
            generate = profile_in_turns({name: functools.partial(
                model.generate, input_ids=prompt.to(model.device), attention_mask=torch.ones_like(prompt).to(model.device),
                max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens, do_sample=False, pad_token_id=pad_id)
                for name, model in models.items()}, iterations=cfg.generate_runs, warmup=0)
            for name in models:
                out[name]["generate_tokens_per_s"] = cfg.new_tokens / generate[name]["p50_s"]
    return out


def _llama_cpp_speeds(sources: Mapping[str, Any], prompt: list[int], cfg: CompressionConfig) -> dict[str, Any]:
    """Greedy generation speed of each model exported to ``cfg.gguf_type`` and run by llama.cpp (what a user runs
    on a laptop), the models taking turns as in :func:`_speeds`; ``{"skipped": why}`` when it cannot run."""
    import tempfile

    from aptops.core.errors import MissingDependencyError

    if not cfg.gguf_type or not cfg.new_tokens:
        return {"skipped": "gguf_type is empty"}
    if not all(isinstance(s, str | Path) and Path(s).is_dir() for s in sources.values()):
        return {"skipped": "llama.cpp speed needs model folders, not objects"}
    try:
        require("llama_cpp", extra="export", feature="llama.cpp generation speed")
        from aptops.lm.gguf import convert_to_gguf, quantize_gguf
    except MissingDependencyError as exc:
        return {"skipped": str(exc)}

    def greedy(llm: Any) -> None:
        for count, _token in enumerate(llm.generate(prompt, temp=0.0, reset=True), 1):
            if count == cfg.new_tokens:  # EOS does not stop it: every model makes the same count
                break

    with tempfile.TemporaryDirectory(prefix="aptops-speed-") as tmp:
        paths = {}
        for name, source in sources.items():
            f16 = convert_to_gguf(source, Path(tmp) / f"{name}-F16.gguf", outtype="F16")
            paths[name] = f16 if cfg.gguf_type == "F16" else quantize_gguf(
                f16, Path(tmp) / f"{name}-{cfg.gguf_type}.gguf", cfg.gguf_type)
        from aptops.lm.llamacpp import open_llama

        llms = {name: open_llama(path, n_ctx=len(prompt) + cfg.new_tokens + 8, seed=0) for name, path in paths.items()}
        try:
            timed = profile_in_turns({name: functools.partial(greedy, llm) for name, llm in llms.items()},
                                     iterations=cfg.generate_runs, warmup=0)
        finally:
            for llm in llms.values():
                llm.close()
    return {name: {"llama_cpp_generate_tokens_per_s": cfg.new_tokens / t["p50_s"]} for name, t in timed.items()}


def evaluate_compression(original: Any, compressed: Any, dataset: Any, *, output_dir: str | Path,
                         config: CompressionConfig | None = None, tokenizer: Any = None,
                         stage: str = "distill") -> StageResult:
    """Compare a compressed model with its original on held-out text.

    Args:
        original / compressed: model folders, Hub ids or ``PreTrainedModel`` objects.
        dataset: held-out text (anything the train stage reads).
        output_dir: the report artifact: ``report.json``, ``report.html``, ``result.json``.
        config: scoring and timing settings.
        tokenizer: the shared tokenizer (default: the original's).
        stage: the stage the report artifact is named for.

    Returns:
        The result: ``outputs["report"]`` the HTML page; metrics ``original_*``, ``compressed_*`` and ``ratio_*``
        (:func:`compression_metrics`); ``details`` the whole comparison (``{"original": {...}, "compressed":
        {...}, "ratios": {...}}``: parameters, size on disk, perplexity, top-1 agreement with the original,
        forward and generation speed, peak forward memory).
    """
    config = config or CompressionConfig()
    details = _compare(original, compressed, dataset, config, tokenizer)
    result = StageResult(stage, outputs={"report": str(Path(output_dir) / "report.html")},
                         metrics=compression_metrics(details), details=details)
    _write_report(details, Path(output_dir), result, config)
    return result


def _compare(original_model: Any, distilled_model: Any, test_data: Any, cfg: CompressionConfig,
             tokenizer: Any) -> dict[str, Any]:
    torch = require("torch", extra="distill", feature="evaluate_compression")
    from aptops.lm.loading import load_causal_lm, load_text_dataset
    from aptops.lm.scoring import eval_blocks, next_token_scores, perplexity

    ev = cfg.evaluation
    data = load_text_dataset(test_data, ev.text_column)
    original, tok, original_source = load_causal_lm(original_model, tokenizer)
    compressed, _, compressed_source = load_causal_lm(distilled_model, tok if not isinstance(distilled_model, str | Path)
                                                      else None)
    blocks = eval_blocks(data, tok, ev, what="the test data")
    vocab = min(original.get_output_embeddings().weight.shape[0], compressed.get_output_embeddings().weight.shape[0],
                len(tok))
    nll = {"original": 0.0, "compressed": 0.0}
    agree = count = 0.0
    for m in (original, compressed):
        m.eval()
    for i in range(0, len(blocks), ev.batch_size):
        ids = torch.tensor(blocks[i:i + ev.batch_size]["input_ids"])
        so = next_token_scores(original, ids, vocab=vocab)
        sc = next_token_scores(compressed, ids, vocab=vocab)
        nll["original"] += float(so.nll.sum())
        nll["compressed"] += float(sc.nll.sum())
        agree += float((so.top1.cpu() == sc.top1.cpu()).sum())
        count += so.nll.numel()
    sample = torch.tensor(blocks[:1]["input_ids"])
    speeds = _speeds(torch, {"original": original, "compressed": compressed}, sample, cfg, tok.pad_token_id)
    gguf = _llama_cpp_speeds({"original": original_model, "compressed": distilled_model},
                             [int(t) for t in sample[0, :16]], cfg)
    rows: dict[str, dict[str, float]] = {}
    for name, model, source in (("original", original, original_model), ("compressed", compressed, distilled_model)):
        loss = nll[name] / count
        rows[name] = {"params": float(sum(p.numel() for p in model.parameters())),
                      "size_bytes": float(_disk_bytes(source, model)), "loss": loss,
                      "perplexity": perplexity(loss), **speeds[name], **gguf.get(name, {})}
    rows["compressed"]["top1_agreement"] = agree / count
    o, c = rows["original"], rows["compressed"]
    ratios = {"params": c["params"] / o["params"], "size": c["size_bytes"] / max(o["size_bytes"], 1.0),
              "perplexity": c["perplexity"] / o["perplexity"], "forward_speedup": o["forward_s"] / c["forward_s"]}
    if "generate_tokens_per_s" in c:
        ratios["generate_speedup"] = c["generate_tokens_per_s"] / o["generate_tokens_per_s"]
    if "llama_cpp_generate_tokens_per_s" in c:
        ratios["llama_cpp_generate_speedup"] = (c["llama_cpp_generate_tokens_per_s"]
                                                / o["llama_cpp_generate_tokens_per_s"])
    return {"original": {"source": str(original_source), **o}, "compressed": {"source": str(compressed_source), **c},
            "ratios": ratios, "tokens": count, "block_size": ev.block_size,
            "llama_cpp": {"gguf_type": cfg.gguf_type, **({"skipped": gguf["skipped"]} if "skipped" in gguf else {})}}


def record_in_lineage(folder: Path, result: Mapping[str, Any]) -> None:
    """Copy a comparison's headline numbers into an aptops model folder's lineage (``aptops.json``), where the
    model card reads them; a folder without one is left alone."""
    if not (folder / LINEAGE_FILE).is_file():
        return
    path = folder / LINEAGE_FILE
    lineage = read_json(path)
    c, r = result["compressed"], result["ratios"]
    lineage.setdefault("metrics", {}).update({
        "compression_perplexity": c["perplexity"], "compression_original_perplexity": result["original"]["perplexity"],
        "compression_top1_agreement": c["top1_agreement"], "compression_params_ratio": r["params"],
        "compression_size_ratio": r["size"], "compression_forward_speedup": r["forward_speedup"]})
    write_json(path, lineage)


def _plot(result: dict[str, Any]) -> str:
    matplotlib = require("matplotlib", extra="debug", feature="the compression plot")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    o, c = result["original"], result["compressed"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = ["parameters", "size on disk", "forward time", "perplexity"]
    values = [c["params"] / o["params"], c["size_bytes"] / max(o["size_bytes"], 1), c["forward_s"] / o["forward_s"],
              c["perplexity"] / o["perplexity"]]
    ax1.bar(names, [v * 100 for v in values], color=["#1f77b4", "#1f77b4", "#2ca02c", "#d62728"])
    ax1.axhline(100, color="#444", linewidth=0.8, linestyle="--")
    ax1.set_ylabel("compressed as % of original")
    ax1.set_title("What compression changed")
    ax1.tick_params(axis="x", labelsize=8)
    ax2.scatter([o["size_bytes"] / 2**20], [o["perplexity"]], s=60, label="original", color="#1f77b4")
    ax2.scatter([c["size_bytes"] / 2**20], [c["perplexity"]], s=60, label="compressed", color="#d62728")
    ax2.set_xlabel("size on disk (MiB)")
    ax2.set_ylabel("perplexity (lower is better)")
    ax2.set_title("Trade-off")
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _write_report(result: dict[str, Any], folder: Path, stage_result: StageResult, config: CompressionConfig) -> None:
    from aptops.core import report

    o, c = result["original"], result["compressed"]
    keys = ["params", "size_bytes", "perplexity", "loss", "forward_tokens_per_s", "generate_tokens_per_s",
            "llama_cpp_generate_tokens_per_s", "forward_peak_rss_delta_bytes"]
    rows = [(k, o.get(k, ""), c.get(k, "")) for k in keys if k in o]
    rows.append(("top1_agreement with the original", "", c["top1_agreement"]))
    html = report.page("aptops compression", [
        ("Original vs compressed", report.table(rows, header=["", "original", "compressed"])),
        ("Ratios", report.table(result["ratios"])),
        ("Trade-off", f"<img alt='compression trade-off' style='max-width:100%' src='data:image/png;base64,{_plot(result)}'>"),
        ("Sources", report.table({"original": o["source"], "compressed": c["source"], "tokens scored": result["tokens"],
                                  "llama.cpp speed": result["llama_cpp"].get("skipped")
                                  or f"both models as {result['llama_cpp']['gguf_type']} GGUF"})),
    ])
    with atomic_output(folder) as tmp:
        write_json(tmp / "report.json", result)
        (tmp / "report.html").write_text(html, encoding="utf-8")
        finish_artifact(tmp, stage_result, config)


def compare_models(base: Any, trained: str | Path, dataset: Any, *, output_dir: str | Path,
                   config: EvalConfig | None = None, stage: str = "train") -> StageResult:
    """Perplexity of the base and the trained model on the same held-out text, written as an artifact."""
    from aptops.core import report

    config = config or EvalConfig()
    before = evaluate_perplexity(str(base), dataset, config)
    after = evaluate_perplexity(str(trained), dataset, config)
    metrics = {"perplexity_base": before["perplexity"], "perplexity_trained": after["perplexity"],
               "loss_base": before["loss"], "loss_trained": after["loss"], "eval_tokens": after["tokens"],
               "perplexity_ratio": after["perplexity"] / before["perplexity"]}
    with atomic_output(output_dir) as tmp:
        write_json(tmp / "evaluation.json", metrics)
        rows = [("base", str(base), before["loss"], before["perplexity"]),
                ("trained", str(trained), after["loss"], after["perplexity"])]
        html = report.page("aptops evaluate", [
            ("Held-out perplexity", report.table(rows, header=["model", "path", "loss", "perplexity"])),
            ("Settings", report.table({"block_size": config.block_size, "tokens": int(after["tokens"])})),
        ])
        (tmp / "report.html").write_text(html, encoding="utf-8")
        result = StageResult(stage, outputs={"evaluation": str(output_dir), "report": str(Path(output_dir) / "report.html")},
                             metrics=metrics)
        finish_artifact(tmp, result)
    return result
