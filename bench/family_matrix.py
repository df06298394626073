"""Every model stage on every family of aptops.lm.architectures: the family x stage table of the any-model issue.

Each family is a tiny random model (4 blocks, 64 wide, 4 query heads in 2 KV groups; a BPE or SentencePiece tokenizer
trained here) taken through each stage with the library calls the CLI runs, every output checked independently:
reloaded by transformers and run (finite logits), pruned sparsity read back from the saved files, a GGUF loaded by
llama.cpp and compared with transformers by the export's own verification (F32: the conversion itself). A cell is ✓, or the refusal the stage gave
before any work (first words), or ✗ with the error.

Run on a CPU: ``python bench/family_matrix.py [--families qwen3,gemma3_text]`` (about 20 s a family).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MOE = {"num_experts_per_tok": 2}
# Granite's own multipliers: with the defaults (1.0) attention logits are so large that llama.cpp's F16 KV cache alone
# flips the next token on a random model, which the verification (rightly) fails
GRANITE = {"embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.0078125,
           "logits_scaling": 8.0}
FIELDS = {  # fields that make each tiny model one llama.cpp can also hold (as tests/unit/export/test_architectures)
    "llama": {}, "mistral": {}, "qwen2": {}, "qwen3": {"tie_word_embeddings": False},
    "gemma": {"hidden_activation": "gelu_pytorch_tanh"},
    "gemma2": {"query_pre_attn_scalar": 16, "sliding_window": 16},
    "gemma3_text": {"query_pre_attn_scalar": 16, "sliding_window": 16,
                    "layer_types": ["sliding_attention", "full_attention"] * 2},
    "phi3": {"partial_rotary_factor": 0.5, "tie_word_embeddings": False},
    "olmo2": {}, "granite": GRANITE,
    "cohere": {"logit_scale": 0.0625}, "stablelm": {"partial_rotary_factor": 0.25}, "starcoder2": {},
    "phi": {"partial_rotary_factor": 0.5},
    "mixtral": {"num_local_experts": 4, "tie_word_embeddings": False, **MOE},
    "qwen3_moe": {"num_experts": 4, "moe_intermediate_size": 32, "norm_topk_prob": True, **MOE},
    "qwen2_moe": {"num_experts": 4, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48, **MOE},
    "olmoe": {"num_experts": 4, "num_key_value_heads": 4, **MOE},
    "granitemoe": {"num_local_experts": 4, **MOE, **GRANITE},
}
SPM = {"mistral", "gemma", "gemma2", "qwen3_moe"}
STAGES = ("train", "prune magnitude", "prune wanda", "prune neuron", "prune head", "prune expert", "student", "distill",
          "debug", "export base", "export pruned", "export student")


def _cell(fn) -> str:
    from aptops.core.errors import ConfigError

    try:
        fn()
        return "✓"
    except ConfigError as exc:
        return "refused: " + str(exc).split(":")[0][:70]
    except Exception as exc:
        return f"✗ {type(exc).__name__}: {str(exc)[:90]}"


def _runs(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[3, 8, 20, 7, 9]])).logits
    if not torch.isfinite(logits).all():
        raise ValueError("non-finite logits after reload")


def family_row(model_type: str, work: Path, spm: Path) -> dict[str, str]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aptops.debug.recipe import DebugStageConfig, debug_model
    from aptops.distill import DistillConfig, create_student, distill_model
    from aptops.export import ExportConfig, export_to_gguf
    from aptops.lm.training import TrainConfig
    from aptops.prune import PruneConfig, prune_model
    from aptops.prune.unstructured import saved_sparsity
    from aptops.train import train_model
    from tests.models import CORPUS, build_tiny_causal_lm

    name = {"phi3": "p-3"}.get(model_type, model_type)  # llama.cpp reads Phi-3's token types off general.name
    base = build_tiny_causal_lm(work / name, model_type, num_hidden_layers=4, initializer_range=0.3,
                                tokenizer_from=spm if model_type in SPM else None, **FIELDS[model_type])
    data = datasets.Dataset.from_dict({"text": CORPUS})
    args = {"max_steps": 1, "per_device_train_batch_size": 4, "use_cpu": True, "save_strategy": "no",
            "report_to": "none"}
    train = TrainConfig(block_size=32, eval_fraction=0.2, training_args=args)
    row: dict[str, str] = {}

    def trained() -> None:
        train_model(str(base), data, output_dir=work / f"{name}-train", config=train)
        _runs(work / f"{name}-train")

    def pruned(method: str, target: float = 0.5) -> None:
        out = work / f"{name}-{method}"
        result = prune_model(str(base), data, output_dir=out, config=PruneConfig(
            method=method, target_sparsity=target, training=train))
        _runs(out)
        if method in ("magnitude", "wanda") and saved_sparsity(out)["sparsity"] < 0.45:
            raise ValueError(f"saved sparsity {saved_sparsity(out)['sparsity']:.3f} for a target of 0.5")
        if method not in ("magnitude", "wanda") and result.metrics["prune_params_after"] >= result.metrics[
                "prune_params_before"]:
            raise ValueError("no parameter was removed")

    def student() -> None:
        model = create_student(AutoModelForCausalLM.from_pretrained(base), keep_layers=[0, 3])
        model.save_pretrained(work / f"{name}-student")
        AutoTokenizer.from_pretrained(base).save_pretrained(work / f"{name}-student")
        _runs(work / f"{name}-student")

    def distilled() -> None:
        distill_model(str(base), data, output_dir=work / f"{name}-distill",
                      config=DistillConfig(training=train, student_layer_stride=2))
        _runs(work / f"{name}-distill")

    def debugged() -> None:
        debug_model(str(base), data, output_dir=work / f"{name}-debug",
                    config=DebugStageConfig(block_size=32, batch_size=2, max_batches=2))

    def exported(folder: Path, tag: str) -> None:
        if not (folder / "config.json").is_file():
            raise ValueError(f"no {tag} model to export (its stage failed)")
        export_to_gguf(folder, output_dir=work / f"{name}-{tag}-gguf", config=ExportConfig(quantization="F32"))

    row["train"] = _cell(trained)
    row["prune magnitude"] = _cell(lambda: pruned("magnitude"))
    row["prune wanda"] = _cell(lambda: pruned("wanda"))
    row["prune neuron"] = _cell(lambda: pruned("neuron"))
    row["prune head"] = _cell(lambda: pruned("head"))
    row["prune expert"] = _cell(lambda: pruned("expert"))
    row["student"] = _cell(student)
    row["distill"] = _cell(distilled)
    row["debug"] = _cell(debugged)
    row["export base"] = _cell(lambda: exported(base, "base"))
    row["export pruned"] = _cell(lambda: exported(work / f"{name}-neuron", "pruned"))
    row["export student"] = _cell(lambda: exported(work / f"{name}-student", "student"))
    return row


def main() -> None:
    from aptops.lm.architectures import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "family_matrix.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("APTOPS_NO_PROGRESS", "1")
    from tests.models import build_tiny_spm_llama

    rows = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="family-matrix-") as tmp:
        spm = build_tiny_spm_llama(Path(tmp) / "spm")
        for family in args.families.split(","):
            t = time.perf_counter()
            rows[family] = family_row(family, Path(tmp) / family, spm)
            ok = sum(v == "✓" for v in rows[family].values())
            print(f"{family:12} {ok:2}/{len(STAGES)} ✓ ({time.perf_counter() - t:.0f} s)", flush=True)
            for stage, cell in rows[family].items():
                if cell != "✓":
                    print(f"    {stage}: {cell}", flush=True)
    lines = ["| family | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
    lines += [f"| {f} | " + " | ".join(r[s] if r[s] == "✓" else r[s].split(":")[0] for s in STAGES) + " |"
              for f, r in rows.items()]
    print("\n".join(lines))
    report = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "seconds": time.perf_counter() - start, "stages": STAGES, "rows": rows, "table": "\n".join(lines),
              "when": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
