"""The export stage's GGUF step: convert, quantize, read back, verify, gate.

Try it on a CPU with the SmolLM2 folder the demo builds::

    aptops export gguf ~/.cache/aptops/models/smollm2-135m-instruct --out runs/gguf --set quantization=Q8_0

The artifact folder holds ``model-<TYPE>.gguf``, ``verify.json`` (logit errors, top-1 agreement,
perplexities, tokenizer agreement, tensor types and fallbacks) and ``result.json``. With ``also`` (``--set
also=[Q4_K_M]``) more types are written beside the first from the same F16 conversion, each verified and gated
the same way, each with its ``verify-<TYPE>.json``. A GGUF that fails the quant gate, or whose tensors fell back
while ``on_fallback=error``, leaves no complete artifact.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.artifacts import (
    LINEAGE_FILE,
    StageResult,
    atomic_output,
    finish_artifact,
    write_json,
    write_lineage,
)
from aptops.core.config import check_choice
from aptops.core.errors import InvalidArtifactError
from aptops.export.lora import is_adapter, merge_adapter
from aptops.export.verify import GateConfig, verify_gguf, verify_plan
from aptops.lm.gguf import (
    FALLBACK_TYPES,
    QUANT_TYPES,
    VOCAB_TYPES,
    convert_to_gguf,
    converter_for,
    inspect_gguf,
    quantize_gguf,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """How :func:`export_to_gguf` converts and checks.

    Attributes:
        quantization: F32, F16, BF16, Q8_0, Q4_0, Q4_K_M, Q5_K_M or Q6_K.
        on_fallback: what to do when llama.cpp wrote other tensor types than asked (rows too narrow):
            ``warn`` (report them) or ``error`` (fail, nothing written).
        verify: compare the GGUF with the source model and apply the gate.
        gate: the quant gate's thresholds.
        verify_text: the held-out text for the comparison (default: a built-in paragraph).
        verify_max_memory_gb: the memory the check may take (0: 90% of what is available). The reference is
            computed in F32; when that does not fit, in the checkpoint's own 16-bit type; when neither fits, the
            check is skipped with a warning and the artifact says it is unverified (``verified: false``).
        vocab_type: ``auto`` (read off the tokenizer), ``bpe`` (byte-level BPE: GPT-2, Llama 3, Qwen2, SmolLM)
            or ``spm`` (SentencePiece: Llama 2, Mistral v0.1 ...).
        fallback_type: the type for weights whose rows do not fit the requested type (k-quants need widths that
            are multiples of 256), at least: Q4_0, Q4_1, IQ4_NL, Q5_0, Q5_1, Q8_0 or F16; empty = llama.cpp's choice.
            They are still listed as fallbacks, but ``on_fallback=error`` accepts them.
        also: more types written beside ``quantization`` in the same folder (side by side: Q8_0 and Q4_K_M),
            each verified and gated; ``quantization`` stays the artifact's main file.
        base_model: for a LoRA adapter folder, where its base model is (a folder or Hub id), when not where
            ``adapter_config.json`` says; the adapter is merged into it before conversion.
    """

    quantization: str = "Q8_0"
    on_fallback: str = "warn"
    verify: bool = True
    gate: GateConfig = field(default_factory=GateConfig)
    verify_text: str | None = None
    verify_max_memory_gb: float = 0.0
    vocab_type: str = "auto"
    fallback_type: str = ""
    also: tuple[str, ...] = ()
    base_model: str = ""

    def __post_init__(self) -> None:
        check_choice("quantization", self.quantization, list(QUANT_TYPES))
        object.__setattr__(self, "also", tuple(dict.fromkeys(t for t in self.also if t != self.quantization)))
        for extra in self.also:
            check_choice("also", extra, list(QUANT_TYPES))
        check_choice("on_fallback", self.on_fallback, ("warn", "error"))
        check_choice("vocab_type", self.vocab_type, VOCAB_TYPES)
        check_choice("fallback_type", self.fallback_type, ("", *FALLBACK_TYPES))

    @property
    def types(self) -> tuple[str, ...]:
        """Every type written, the main one first."""
        return (self.quantization, *self.also)


def export_to_gguf(model: str | Path, *, output_dir: str | Path, config: ExportConfig | None = None) -> StageResult:
    """Convert a Hugging Face causal LM folder to a verified GGUF artifact folder.

    Args:
        model: the model folder (safetensors, config.json, tokenizer), or a LoRA adapter folder: merged into its
            base first (see ``ExportConfig.base_model``), and the merged model is what the GGUF is checked against.
        output_dir: the artifact folder: ``model-<TYPE>.gguf``, ``verify.json``, ``result.json``.
        config: the type, the check against the source model and its gate (see :class:`ExportConfig`).

    Returns:
        The result: ``outputs["gguf"]`` the file; metrics size and, verified, the logit errors and agreement.

    Raises:
        InvalidArtifactError: the GGUF failed the quant gate, or fell back with ``on_fallback=error``; nothing
            is left at ``output_dir``.
    """
    config = config or ExportConfig()
    with atomic_output(output_dir) as tmp, tempfile.TemporaryDirectory(prefix="aptops-gguf-", dir=tmp.parent) as work:
        if is_adapter(model):
            model = merge_adapter(model, Path(work) / Path(model).resolve().name, base_model=config.base_model)
        converter = converter_for(model)  # an architecture in no table, with no llama.cpp converter: refused here
        f16: Path | None = None
        results = []
        for q in config.types:
            name = f"model-{q}.gguf"
            if q in ("F16", "F32", "BF16"):  # written by the converter itself, not quantized
                convert_to_gguf(model, tmp / name, outtype=q, vocab_type=config.vocab_type)
            else:
                if f16 is None:  # one conversion for every quantized type
                    f16 = convert_to_gguf(model, Path(work) / "model-F16.gguf", outtype="F16",
                                          vocab_type=config.vocab_type)
                quantize_gguf(f16, tmp / name, q, fallback_type=config.fallback_type)
            results.append((q, _check_one(tmp / name, model, q, config)))
        (q, (report, metrics, written)), others = results[0], results[1:]
        for _, (each, _, _) in results:
            each["converter"] = converter
        if converter["converter"] != "aptops":
            log.warning("%s was converted by llama.cpp's own converter (%s), then verified by aptops",
                        converter["architecture"], converter["version"])
        write_json(tmp / "verify.json", report)
        for extra, (extra_report, extra_metrics, _) in others:  # each type's numbers, prefixed by its type
            write_json(tmp / f"verify-{extra}.json", extra_report)
            metrics.update({f"{extra}_{k}": v for k, v in extra_metrics.items()})
        if others:
            write_json(tmp / f"verify-{q}.json", report)
        # the GGUF carries the lineage of the model it came from, with this export on top (a registry or a card
        # reads base model, datasets and versions from it)
        if (Path(model) / LINEAGE_FILE).is_file():
            shutil.copyfile(Path(model) / LINEAGE_FILE, tmp / LINEAGE_FILE)
        write_lineage(tmp, stage="export", inputs={"model": str(model)}, config=config, metrics=metrics)
        result = StageResult("export", outputs={"gguf": str(Path(output_dir) / f"model-{q}.gguf")}, metrics=metrics,
                             details={"quantization": q, "tensor_types": written.tensor_types, "converter": converter,
                                      "also": {t: f"model-{t}.gguf" for t, _ in others}})
        finish_artifact(tmp, result, config)
    return result


def _check_one(path: Path, model: str | Path, q: str, config: ExportConfig) -> tuple[dict[str, Any], dict[str, float], Any]:
    """Read one written GGUF back, report its fallbacks, verify and gate it: ``(report, metrics, written)``.

    Raises:
        InvalidArtifactError: it fell back with ``on_fallback=error``, or failed the gate.
    """
    written = inspect_gguf(path, q)
    if written.fallbacks:
        chose = f"fallback_type={config.fallback_type}" if config.fallback_type else "llama.cpp fell back"
        message = (f"{len(written.fallbacks)} tensors are not {q} ({chose}: their rows are too narrow): "
                   + ", ".join(f"{k}={v}" for k, v in list(written.fallbacks.items())[:5]))
        if config.on_fallback == "error" and not config.fallback_type:  # a chosen floor is an answer
            raise InvalidArtifactError(message + "; choose another type or set on_fallback=warn")
        log.warning(message)
    report: dict[str, Any] = {"gguf": written.to_dict()}
    metrics = {"size_bytes": float(written.size_bytes), "fallback_tensors": float(len(written.fallbacks))}
    plan = verify_plan(model, path, config.verify_max_memory_gb) if config.verify else None
    if plan is not None and plan["dtype"] is None:
        log.warning("the %s GGUF is NOT verified: checking it against transformers would take %.1f GB (%.1f GB in 16 "
                    "bits) and the budget is %.1f GB; raise verify_max_memory_gb or verify on a larger machine", q,
                    plan["cost_bytes"]["float32"] / 2**30, min(plan["cost_bytes"].values()) / 2**30,
                    plan["budget_bytes"] / 2**30)
        report["verify"] = {"skipped": "over the memory budget", **plan}
        metrics["verified"] = 0.0
    elif plan is not None:
        if plan["dtype"] != "float32":
            log.warning("verifying against transformers in %s (F32 would take %.1f GB of the %.1f GB budget)",
                        plan["dtype"], plan["cost_bytes"]["float32"] / 2**30, plan["budget_bytes"] / 2**30)
        check = verify_gguf(path, model, text=config.verify_text, gate=config.gate,
                            quantized=q not in ("F32", "F16", "BF16"), dtype=plan["dtype"])
        report["verify"] = check | {"memory": plan}
        metrics["verified"] = 1.0
        metrics.update({k: float(check[k]) for k in ("top1_agreement", "max_abs_logit_error", "mean_abs_logit_error",
                                                      "perplexity_delta", "tokenizer_agreement", "min_logit_cosine")})
        if not check["passed"]:
            raise InvalidArtifactError(f"the {q} GGUF failed the quant gate: {'; '.join(check['failures'])}; "
                                       "the thresholds are in gate.* (or pick a less lossy type)")
    return report, metrics, written
