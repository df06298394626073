"""Check a GGUF against its source model: logits, next-token agreement, perplexity, tokenization.

The same held-out text goes through transformers and through llama.cpp (``llama-cpp-python``), token
ids taken from the Hugging Face tokenizer so both see the same input; the logits are compared position by
position. Separately, llama.cpp's own tokenization of a multilingual sample is compared with the Hugging
Face tokenizer's, so a wrong pre-tokenizer or a lost merge shows up as a number, not as odd output later.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aptops.core.config import check_range
from aptops.core.deps import require
from aptops.core.errors import InvalidArtifactError

MULTILINGUAL_SAMPLE = (
    "The quick brown fox jumps over the lazy dog. Numbers: 12345, 3.14159, 2026-11-27.\n"
    "Café déjà vu, naïve façade — «quotes» and ‘curly’ ones.\n"
    "机器学习模型需要干净的数据。日本語のテキストも。한국어 문장도 있습니다.\n"
    "def f(x):\n    return x ** 2  # code, tabs\tand   spaces\n"
    "Emoji 🙂🚀 and symbols ∑∫√ ≤ ≥ ≠."
)
DEFAULT_TEXT = (
    "Language models learn the statistics of text. A model trained on clean, deduplicated data generalises "
    "better than one trained on noisy data, and a small model distilled from a larger teacher can keep much "
    "of its quality at a fraction of the cost. Exporting the model to GGUF lets llama.cpp and Ollama run it "
    "on a laptop, and checking the exported file against the source catches conversion mistakes early."
)


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """Thresholds of the quant gate: a GGUF beyond them fails verification.

    A quantized GGUF is allowed its quantization error; an unquantized one (F32, F16, BF16) is a conversion
    and must reproduce the model, so it answers to the much tighter ``exact_*`` thresholds: a wrong conversion
    (a missing rope factor, a mis-permuted head) fails there however plausible its text looks.

    Attributes:
        min_top1_agreement: the least share of positions where both pick the same next token.
        max_perplexity_change: the largest relative perplexity change, ``|ppl_cpp - ppl_hf| / ppl_hf``
            (either way: a quantized model that scores "better" on one text is no closer to its source).
        min_tokenizer_agreement: the least share of identical token ids on the multilingual sample.
        exact_min_top1_agreement / exact_max_perplexity_change: the same for an unquantized GGUF.
    """

    min_top1_agreement: float = 0.6
    max_perplexity_change: float = 0.5
    min_tokenizer_agreement: float = 1.0
    exact_min_top1_agreement: float = 0.97
    exact_max_perplexity_change: float = 0.02

    def __post_init__(self) -> None:
        check_range("min_top1_agreement", self.min_top1_agreement, min_value=0.0, max_value=1.0)
        check_range("max_perplexity_change", self.max_perplexity_change, min_value=0.0)
        check_range("min_tokenizer_agreement", self.min_tokenizer_agreement, min_value=0.0, max_value=1.0)
        check_range("exact_min_top1_agreement", self.exact_min_top1_agreement, min_value=0.0, max_value=1.0)
        check_range("exact_max_perplexity_change", self.exact_max_perplexity_change, min_value=0.0)


def available_memory_bytes() -> int:
    """Memory the kernel says a new allocation can get without swapping (``MemAvailable``); 0 if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def verify_plan(model_path: str | Path, gguf_path: str | Path, max_memory_gb: float = 0.0) -> dict[str, Any]:
    """How the check against transformers can run within a memory budget, and what each way costs.

    ``dtype`` ``float32``: the model loaded in F32. When that does not fit, the checkpoint's own 16-bit type
    (``bfloat16``/``float16``): the blocks are kept in 16 bits and each is raised to F32 only while it runs
    (embeddings, final norm and head in F32), so the reference is still computed in F32 on the very same
    weights. ``None``: not even that fits. The cost is the weights in memory plus the GGUF llama.cpp maps;
    ``max_memory_gb`` 0 means 90% of the memory available now."""
    from aptops.lm.gguf import safetensors_index

    tensors = safetensors_index(Path(model_path))
    sizes = {name: math.prod(t.shape) for name, t in tensors.items()}
    params = sum(sizes.values())
    per_block: Counter[str] = Counter()  # parameters per decoder block; "" for the rest
    for name, size in sizes.items():
        block = re.search(r"\.layers\.(\d+)\.", name)
        per_block[block[1] if block else ""] += size
    outside = per_block.pop("", 0)
    largest = max(tensors.values(), key=lambda t: math.prod(t.shape))
    own = {"BF16": "bfloat16", "F16": "float16"}.get(largest.dtype, "float32")
    mapped = Path(gguf_path).stat().st_size
    budget = max_memory_gb * 2**30 if max_memory_gb > 0 else 0.9 * available_memory_bytes()
    costs = {"float32": params * 4 + mapped}
    if own != "float32":
        costs[own] = (params - outside) * 2 + outside * 4 + max(per_block.values(), default=0) * 4 + mapped
    dtype = next((d for d, cost in costs.items() if not budget or cost <= budget), None)
    return {"dtype": dtype, "parameters": params, "budget_bytes": int(budget), "cost_bytes": costs}


def _blocks_in_float32(torch: Any, model: Any, dtype: Any) -> None:
    """Keep ``model``'s decoder blocks in ``dtype`` and raise each to F32 while it runs; everything else in F32."""
    blocks = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList)
                  and len(m) == model.config.num_hidden_layers)

    def raise_(module: Any, args: Any) -> None:
        module.float()

    def lower(module: Any, args: Any, out: Any) -> None:
        module.to(dtype)

    kept = set()
    for block in blocks:
        kept.update(id(p) for p in block.parameters())
        block.register_forward_pre_hook(raise_)
        block.register_forward_hook(lower)
    for module in model.modules():  # embeddings, norms, head and buffers (rotary frequencies) in F32
        for param in module.parameters(recurse=False):
            if id(param) not in kept:
                param.data = param.data.float()
        for name, buf in module.named_buffers(recurse=False):
            if buf.is_floating_point():
                module._buffers[name] = buf.float()


def _log_softmax(np: Any, x: Any) -> Any:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def verify_gguf(gguf_path: str | Path, model_path: str | Path, *, text: str | None = None,
                gate: GateConfig | None = None, n_ctx: int = 512, quantized: bool = True,
                dtype: str = "float32") -> dict[str, Any]:
    """Compare ``gguf_path`` with the transformers model in ``model_path``; returns the figures and ``passed``.

    ``quantized=False`` (an F32 / F16 / BF16 file) holds it to the gate's ``exact_*`` thresholds. ``dtype`` is
    the one transformers computes the reference in (F32 unless memory forbids: see :func:`verify_plan`)."""
    np = require("numpy", extra="export", feature="verifying GGUF")
    torch = require("torch", extra="export", feature="verifying GGUF")
    transformers = require("transformers", extra="export", feature="verifying GGUF")
    require("llama_cpp", extra="export", feature="verifying GGUF")
    gate = gate or GateConfig()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype),
                                                              use_safetensors=True)
    if dtype != "float32":
        _blocks_in_float32(torch, model, getattr(torch, dtype))
    model.eval()
    if len(tokenizer) < model.config.vocab_size // 2:
        hint = (" transformers could not read tokenizer.model: sentencepiece >= 0.2.3 needs protobuf 7 (kfp keeps "
                "protobuf < 7); install 'sentencepiece<0.2.3'" if (Path(model_path) / "tokenizer.model").is_file()
                else " the folder's tokenizer does not belong to this model")
        raise InvalidArtifactError(f"the tokenizer of {str(model_path)!r} has {len(tokenizer)} tokens for a model with "
                                   f"{model.config.vocab_size} embeddings:{hint}", path=str(model_path))
    ids = tokenizer(text or DEFAULT_TEXT, add_special_tokens=False).input_ids[: n_ctx - 1]
    if len(ids) < 2:
        raise InvalidArtifactError("the verification text has fewer than 2 tokens")
    with torch.inference_mode():
        hf = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    from aptops.lm.llamacpp import open_llama

    llm = open_llama(gguf_path, n_ctx=n_ctx, logits_all=True, seed=0, n_threads=os.cpu_count() or 1)
    try:
        llm.reset()
        llm.eval(ids)
        cpp = np.array(llm.scores[: len(ids)], dtype=np.float32)
        sample_hf = tokenizer(MULTILINGUAL_SAMPLE, add_special_tokens=False).input_ids
        sample_cpp = llm.tokenize(MULTILINGUAL_SAMPLE.encode("utf-8"), add_bos=False, special=False)
    finally:
        llm.close()
    vocab = min(hf.shape[-1], cpp.shape[-1])
    hf, cpp = hf[:, :vocab], cpp[:, :vocab]
    diff = np.abs(hf - cpp)
    targets = np.array(ids[1:])
    lp_hf = _log_softmax(np, hf[:-1])[np.arange(len(targets)), targets]
    lp_cpp = _log_softmax(np, cpp[:-1])[np.arange(len(targets)), targets]
    ppl_hf, ppl_cpp = math.exp(-float(lp_hf.mean())), math.exp(-float(lp_cpp.mean()))
    cosine = (hf * cpp).sum(-1) / (np.linalg.norm(hf, axis=-1) * np.linalg.norm(cpp, axis=-1) + 1e-12)
    same = sum(a == b for a, b in zip(sample_hf, sample_cpp, strict=False))
    tok_agree = same / max(len(sample_hf), len(sample_cpp))
    result = {
        "tokens": len(ids),
        "reference_dtype": dtype,
        "max_abs_logit_error": float(diff.max()),
        "mean_abs_logit_error": float(diff.mean()),
        "top1_agreement": float((hf.argmax(-1) == cpp.argmax(-1)).mean()),
        "min_logit_cosine": float(cosine.min()),
        "mean_logit_cosine": float(cosine.mean()),
        "perplexity_transformers": ppl_hf,
        "perplexity_llama_cpp": ppl_cpp,
        "perplexity_delta": ppl_cpp - ppl_hf,
        "tokenizer_agreement": tok_agree,
        "tokenizer_tokens": {"transformers": len(sample_hf), "llama_cpp": len(sample_cpp)},
    }
    failures = []
    least_top1 = gate.min_top1_agreement if quantized else gate.exact_min_top1_agreement
    most_change = gate.max_perplexity_change if quantized else gate.exact_max_perplexity_change
    kind = "" if quantized else " (unquantized: the conversion must reproduce the model)"
    if result["top1_agreement"] < least_top1:
        failures.append(f"top-1 agreement {result['top1_agreement']:.3f} < {least_top1}{kind}")
    change = abs(ppl_cpp - ppl_hf) / ppl_hf
    if change > most_change:
        failures.append(f"perplexity changed by {change:.2%} > {most_change:.2%}{kind}")
    if tok_agree < gate.min_tokenizer_agreement:
        failures.append(f"tokenizer agreement {tok_agree:.3f} < {gate.min_tokenizer_agreement}")
    result["passed"] = not failures
    result["failures"] = failures
    return result
