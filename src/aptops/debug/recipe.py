"""The debug stage as one call: profile a causal LM, look at its activations on real text, run a short
diagnostic training, and write the report folder (``report.html`` / ``.json`` / ``.pdf``, ``result.json``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aptops.core.artifacts import StageResult, read_json
from aptops.core.config import check_range
from aptops.core.deps import require
from aptops.core.errors import InvalidArtifactError
from aptops.debug.activations import detect_dead_neurons, detect_saturated_neurons, monitor_activations
from aptops.debug.diagnose import DiagnoseConfig, diagnose_training
from aptops.debug.findings import sort_findings
from aptops.debug.memory import detect_memory_leaks, gpu_snapshot, track_memory
from aptops.debug.profiling import profile_model
from aptops.debug.visualize import generate_full_report

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DebugStageConfig:
    """Settings of :func:`debug_model`.

    Attributes:
        block_size: tokens per sequence (documents packed as in training).
        batch_size: sequences per batch.
        text_column: the dataset column holding the text.
        steps: optimizer steps of the diagnostic training (0: skip it).
        learning_rate: the learning rate under test.
        max_batches: batches for the activation statistics and each validation.
        profile: profile one forward pass (latency, FLOPs, memory per layer).
    """

    block_size: int = 128
    batch_size: int = 4
    text_column: str = "text"
    steps: int = 20
    learning_rate: float = 5e-5
    max_batches: int = 8
    profile: bool = True

    def __post_init__(self) -> None:
        check_range("block_size", self.block_size, min_value=2)
        check_range("batch_size", self.batch_size, min_value=1)
        check_range("steps", self.steps, min_value=0)
        check_range("max_batches", self.max_batches, min_value=1)
        check_range("learning_rate", self.learning_rate, min_value=0.0, min_inclusive=False)


def _loaders(tokenized: Any, batch_size: int, max_batches: int) -> tuple[list[Any], list[Any]]:
    torch = require("torch", extra="debug", feature="the debug stage")
    ids = torch.tensor(tokenized["input_ids"])
    batches = [{"input_ids": ids[i:i + batch_size], "labels": ids[i:i + batch_size]}
               for i in range(0, len(ids) - batch_size + 1, batch_size)]
    if len(batches) < 2:
        raise InvalidArtifactError(
            f"the dataset yields {len(ids)} blocks: at least {2 * batch_size} are needed for a training and a "
            "validation batch; add text or lower block_size / batch_size")
    n_val = max(1, min(max_batches, len(batches) // 5))
    return batches[n_val:], batches[:n_val]


def debug_model(model: str | Path, dataset: Any, *, output_dir: str | Path,
                config: DebugStageConfig | None = None) -> StageResult:
    """Profile, inspect and diagnose a causal LM on a dataset; write the report folder at ``output_dir``."""
    from aptops.lm import load_causal_lm, load_text_dataset, pack_for_clm

    cfg = config or DebugStageConfig()
    data = load_text_dataset(dataset, cfg.text_column)  # a bad dataset fails before the model is loaded
    with track_memory(interval=0.5, track_objects=False) as memory:
        lm, tokenizer, source = load_causal_lm(str(model))
        tokenized = pack_for_clm(data, tokenizer, block_size=cfg.block_size, text_column=cfg.text_column)
        train, val = _loaders(tokenized, cfg.batch_size, cfg.max_batches)
        stats: dict[str, Any] = {}
        if cfg.profile:
            stats["profile"] = profile_model(lm, (cfg.block_size,), cfg.batch_size)
        acts = monitor_activations(lm, val, max_batches=cfg.max_batches)
        dead = detect_dead_neurons(acts)
        saturated = detect_saturated_neurons(acts)
        findings = dead["findings"] + saturated["findings"]
        diagnosis = None
        if cfg.steps:
            # leaks are judged on the training steps only (after their warm-up), not on model loading
            with track_memory(interval=0.2, track_objects=True) as training_memory:
                diagnosis = diagnose_training(lm, train, val, DiagnoseConfig(
                    steps=cfg.steps, learning_rate=cfg.learning_rate, max_val_batches=cfg.max_batches,
                    eval_every=max(1, cfg.steps // 5)))
            findings += diagnosis.findings + detect_memory_leaks(training_memory, warmup=0.3).findings
    findings = sort_findings(findings)
    metrics: dict[str, float] = {
        "dead_neuron_ratio": dead["dead_ratio"], "peak_memory_bytes": float(memory.peak),
    }
    if "profile" in stats:
        metrics |= {"forward_latency_s": stats["profile"]["latency_s"], "forward_flops": float(stats["profile"]["flops"])}
    if diagnosis is not None:
        metrics["data_wait_share"] = diagnosis.data_wait_share
        metrics["step_time_s"] = diagnosis.step_time_s
        if diagnosis.update_ratios:
            ratios = sorted(diagnosis.update_ratios.values())
            metrics["median_update_ratio"] = ratios[len(ratios) // 2]
        stats["gradients"] = diagnosis.gradients
        stats["update_ratios"] = diagnosis.update_ratios
        stats["training"] = {"loss": diagnosis.train_loss, "eval_loss": diagnosis.val_loss}
    stats |= {"summary": {"model": source, "blocks": len(tokenized), **metrics}, "findings": findings,
              "activations": {n: s.summary() for n, s in acts.items()},
              "dead_neurons": {k: v for k, v in dead.items() if k != "findings"}, "memory": memory, "gpu": gpu_snapshot()}
    paths = generate_full_report(stats, output_dir, title=f"aptops debug report: {Path(str(model)).name}", metrics=metrics)
    log.info("debug report: %s (%d findings)", paths["html"], len(findings))
    result = read_json(Path(output_dir) / "result.json")
    return StageResult("debug", outputs=paths, metrics=result["metrics"],
                       details={"findings": [f.to_dict() for f in findings]})
