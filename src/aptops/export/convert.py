"""Hugging Face causal LM folder → GGUF, written with the ``gguf`` package, quantized by llama.cpp.

The conversion itself is aptops' (tensor names through ``gguf.TensorNameMap``, metadata keys through
``gguf.GGUFWriter``, merges and special tokens through ``gguf.SpecialVocab``); quantization is llama.cpp's
own ``llama_model_quantize`` through ``llama-cpp-python``. What llama.cpp actually wrote is then read back
with ``gguf.GGUFReader``: llama.cpp silently falls back to other types when a row width does not suit the
requested one (k-quants need multiples of 256, every block type multiples of 32), and the file header
still names the requested type, so aptops counts the tensor types itself and reports the fallbacks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.config import check_choice
from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, ConfigError, InvalidArtifactError

log = logging.getLogger(__name__)

# HF architecture -> (gguf arch name, permute Q/K for llama.cpp's rotary layout)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}
# llama.cpp's quantization types by name (the LLAMA_FTYPE_* values) and the tensor types they aim for.
QUANT_TYPES: dict[str, tuple[int, tuple[str, ...]]] = {
    "F32": (0, ("F32",)),
    "F16": (1, ("F16",)),
    "BF16": (32, ("BF16",)),
    "Q8_0": (7, ("Q8_0",)),
    "Q4_0": (2, ("Q4_0",)),
    "Q4_K_M": (15, ("Q4_K", "Q6_K")),
    "Q5_K_M": (17, ("Q5_K", "Q6_K")),
    "Q6_K": (18, ("Q6_K",)),
}
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# (digits split individually first?, split regex) -> llama.cpp's pre-tokenizer name
PRE_TOKENIZERS: dict[tuple[bool, str], str] = {
    (False, _GPT2): "gpt-2",
    (True, _GPT2): "smollm",
    (False, _LLAMA3): "llama-bpe",
    (False, _QWEN2): "qwen2",
}


@dataclass
class GgufResult:
    path: Path
    quantization: str
    tensor_types: dict[str, int]
    fallbacks: dict[str, str]  # tensor name -> the type it got because its rows do not fit the requested one
    size_bytes: int
    upgraded: dict[str, str] = field(default_factory=dict)  # rows fit, llama.cpp chose more bits (output.weight)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "quantization": self.quantization, "tensor_types": self.tensor_types,
                "fallback_tensors": len(self.fallbacks), "fallbacks": self.fallbacks, "upgraded": self.upgraded,
                "size_bytes": self.size_bytes}


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the split rules of a BPE ``tokenizer.json`` (refused if unknown)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    digits, regex = False, None
    for step in steps:
        kind = step.get("type")
        if kind == "Digits" and step.get("individual_digits"):
            digits = True
        elif kind == "Split":
            regex = (step.get("pattern") or {}).get("Regex")
        elif kind == "ByteLevel" and step.get("use_regex", True) and regex is None:
            regex = _GPT2
    name = PRE_TOKENIZERS.get((digits, regex or ""))
    if name is None:
        raise ConfigError(f"the tokenizer's pre-tokenizer (digits split: {digits}, regex: {regex!r}) has no known "
                          f"llama.cpp name; known: {sorted(set(PRE_TOKENIZERS.values()))}", field="tokenizer")
    return name


VOCAB_TYPES = ("auto", "bpe", "spm")


def vocab_kind(folder: Path, tok: dict[str, Any], vocab_type: str = "auto") -> str:
    """``bpe`` or ``spm`` for a model folder's tokenizer, refused with what to do when neither fits.

    A byte-level BPE ``tokenizer.json`` is ``bpe``; SentencePiece is a ``tokenizer.model`` or the
    ``tokenizer.json`` transformers converts it to (BPE over "▁"-marked pieces with ``byte_fallback``).
    """
    check_choice("vocab_type", vocab_type, VOCAB_TYPES)
    model = tok.get("model") or {}
    if not tok and not (folder / "tokenizer.model").is_file():
        raise InvalidArtifactError(f"{str(folder)!r} has no tokenizer.json nor tokenizer.model: save the tokenizer "
                                   "with the model (tokenizer.save_pretrained(folder))", path=str(folder))
    if tok and model.get("type") != "BPE":
        raise ConfigError(f"tokenizer model {model.get('type')!r}: GGUF export handles byte-level BPE and "
                          "SentencePiece BPE tokenizers (llama.cpp's gpt2 and llama vocabularies); a Unigram or "
                          "WordPiece model has no exact llama.cpp equivalent here", field="tokenizer")
    found = "spm" if (model.get("byte_fallback") or not tok) else "bpe"
    if vocab_type != "auto" and vocab_type != found:
        raise ConfigError(f"vocab_type={vocab_type!r} but the tokenizer in {str(folder)!r} is {found!r} "
                          "(SentencePiece pieces with byte fallback are 'spm', byte-level BPE is 'bpe'); "
                          "use vocab_type=auto", field="vocab_type", value=vocab_type)
    return found


# rope scaling types llama.cpp reads for the llama family, by the name transformers gives them
ROPE_TYPES = ("default", "linear", "llama3")


def rope_settings(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, scaling)`` of a HF config, whichever spelling it uses (``rope_parameters`` in transformers
    5, ``rope_scaling`` + ``rope_theta`` before); ``scaling`` is ``None`` for plain rotary embeddings.

    Raises:
        ConfigError: a scaling type llama.cpp's llama family does not reproduce exactly (converted anyway it would
            be a silently different model).
    """
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {}) or {k: v for k, v in params.items() if k != "rope_theta"}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind not in ROPE_TYPES:
        raise ConfigError(f"rope scaling {kind!r} is not supported for GGUF export (supported: "
                          f"{', '.join(ROPE_TYPES)}); a conversion without it would answer differently",
                          field="rope_scaling", value=kind)
    return theta, (None if kind == "default" else dict(scaling, rope_type=kind))


def llama3_rope_factors(theta: float, head_dim: int, scaling: dict[str, Any]) -> Any:
    """The per-frequency divisors of Llama 3.1-style rope scaling, as the ``rope_freqs`` tensor llama.cpp reads:
    high frequencies (wavelength under ``original / high_freq_factor``) keep theirs, low ones (over
    ``original / low_freq_factor``) are divided by ``factor``, and the band between blends the two."""
    np = require("numpy", extra="export", feature="writing GGUF")
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling["original_max_position_embeddings"])
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    smooth = np.clip((original / wavelen - low) / (high - low), 0.0, 1.0)
    divisor = 1.0 / (smooth + (1.0 - smooth) / factor)  # 1 where smooth is 1 (high), factor where 0 (low)
    return divisor.astype(np.float32)


def _permute(weights: Any, n_head: int) -> Any:
    """HF stores Q/K rows as two rotary halves per head; llama.cpp wants them interleaved."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def convert_to_gguf(model_path: str | Path, output_path: str | Path, *, outtype: str = "F16",
                    vocab_type: str = "auto") -> Path:
    """Write ``model_path`` (a HF causal LM folder with safetensors) as an F16 or F32 GGUF file.

    ``vocab_type``: ``bpe`` (byte-level BPE, llama.cpp's ``gpt2`` tokenizer), ``spm`` (SentencePiece BPE,
    llama.cpp's ``llama`` tokenizer: Llama 2, Mistral v0.1, TinyLlama ...) or ``auto`` (read off the folder).
    """
    gguf = require("gguf", extra="export", feature="writing GGUF")
    np = require("numpy", extra="export", feature="writing GGUF")
    safetensors = require("safetensors", extra="export", feature="reading safetensors")
    from aptops.hub.models import check_model_folder

    if outtype not in ("F16", "F32"):
        raise ConfigError(f"outtype {outtype!r}: the converter writes F16 or F32; quantize afterwards",
                          field="outtype", value=outtype)
    folder = check_model_folder(model_path)
    weights = sorted(folder.glob("*.safetensors"))
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch_name = (cfg.get("architectures") or ["?"])[0]
    if arch_name not in ARCHITECTURES:
        raise ConfigError(f"architecture {arch_name!r} is not supported for GGUF export; supported: "
                          f"{sorted(ARCHITECTURES)}", field="architecture", value=arch_name)
    gguf_arch, permute = ARCHITECTURES[arch_name]
    tok_file = folder / "tokenizer.json"
    tok = json.loads(tok_file.read_text(encoding="utf-8")) if tok_file.is_file() else {}
    kind = vocab_kind(folder, tok, vocab_type)
    pre = pre_tokenizer_name(tok) if kind == "bpe" else "default"

    n_layer, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    vocab_size = cfg["vocab_size"]
    tied = bool(cfg.get("tie_word_embeddings"))
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[_arch_enum(gguf, gguf_arch)])
    try:
        writer.add_name((cfg.get("_name_or_path") and Path(str(cfg["_name_or_path"])).name) or folder.name)
        writer.add_context_length(cfg.get("max_position_embeddings", 2048))
        writer.add_embedding_length(hidden)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(cfg["intermediate_size"])
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_dimension_count(head_dim)
        theta, scaling = rope_settings(cfg)
        writer.add_rope_freq_base(theta)
        if scaling is not None and scaling["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_vocab_size(vocab_size)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_file_type(QUANT_TYPES[outtype][0])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if kind == "bpe":
            _add_vocab(gguf, writer, folder, tok, vocab_size, pre)
        else:
            _add_spm_vocab(gguf, writer, folder, tok, vocab_size)

        names = gguf.get_tensor_name_map(_arch_enum(gguf, gguf_arch), n_layer)
        n_params = 0
        if scaling is not None and scaling["rope_type"] == "llama3":
            writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                              llama3_rope_factors(theta, head_dim, scaling))
        for file in weights:
            with safetensors.safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                        continue
                    data = f.get_tensor(name).float().numpy()
                    if permute and name.endswith("q_proj.weight"):
                        data = _permute(data, n_head)
                    elif permute and name.endswith("k_proj.weight"):
                        data = _permute(data, n_kv)
                    new = names.get_name(name, try_suffixes=(".weight", ".bias"))
                    if new is None:
                        raise InvalidArtifactError(f"tensor {name!r} has no GGUF name for {gguf_arch}; the "
                                                   "checkpoint does not look like a plain " + arch_name)
                    # norms and biases stay F32 (llama.cpp computes them in F32); matrices take outtype
                    if outtype == "F16" and data.ndim >= 2:
                        data = data.astype(np.float16)
                    writer.add_tensor(new, np.ascontiguousarray(data))
                    n_params += data.size
        writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _arch_enum(gguf: Any, name: str) -> Any:
    return {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[name]


def _add_vocab(gguf: Any, writer: Any, folder: Path, tok: dict[str, Any], vocab_size: int, pre: str) -> None:
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    added = {a["content"]: a for a in tok.get("added_tokens", [])}
    for content, a in added.items():
        vocab[content] = a["id"]
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif t in added:
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL if added[t].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    _add_bos_flag(writer, special, folder)
    special.add_to_gguf(writer)


def _add_bos_flag(writer: Any, special: Any, folder: Path) -> None:
    """``add_bos_token`` as transformers' tokenizer of the folder behaves, when tokenizer_config does not say.

    The post-processor of a tokenizer.json, or the class defaults of a converted tokenizer.model, decide it;
    asking transformers itself is the one answer that holds for both."""
    if "bos" in special.add_special_token:
        return
    bos = special.special_token_ids.get("bos")
    transformers = require("transformers", extra="export", feature="reading the tokenizer")
    ids = transformers.AutoTokenizer.from_pretrained(folder)("a").input_ids
    writer.add_add_bos_token(bos is not None and ids[:1] == [bos])


def _spm_pieces(gguf: Any, folder: Path, tok: dict[str, Any]) -> tuple[list[tuple[str, float, Any]], bool]:
    """(piece, score, type) for every SentencePiece id, and whether a space is prepended to the text.

    From ``tokenizer.model`` when there is one (the scores llama.cpp merges by, exactly); else from the
    ``tokenizer.json`` transformers made of it, a merged piece scoring minus the rank of the first merge that
    makes it, so llama.cpp's highest-score-first merging follows the same order as the BPE merges.
    """
    sp_file = folder / "tokenizer.model"
    if sp_file.is_file():
        spm = require("sentencepiece", extra="export", feature="reading tokenizer.model")
        sp = spm.SentencePieceProcessor(model_file=str(sp_file))
        pieces = []
        for i in range(sp.get_piece_size()):
            kind = (gguf.TokenType.UNKNOWN if sp.is_unknown(i) else gguf.TokenType.CONTROL if sp.is_control(i)
                    else gguf.TokenType.UNUSED if sp.is_unused(i) else gguf.TokenType.BYTE if sp.is_byte(i)
                    else gguf.TokenType.NORMAL)
            pieces.append((sp.id_to_piece(i), float(sp.get_score(i)), kind))
        prefix = _space_prefix(tok) if tok else "".join(sp.encode("a", out_type=str)).startswith("\u2581")
        return pieces, prefix
    model = tok["model"]
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges", [])]
    rank: dict[str, int] = {}
    for r, (a, b) in enumerate(merges):
        rank.setdefault(a + b, r)
    unk = model.get("unk_token")
    pieces = []
    for piece, i in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        kind = (gguf.TokenType.UNKNOWN if piece == unk else gguf.TokenType.BYTE
                if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece) else gguf.TokenType.NORMAL)
        pieces.append((piece, -float(rank[piece]) if piece in rank else -1e6 - i, kind))
        if i != len(pieces) - 1:
            raise InvalidArtifactError(f"tokenizer.json's vocabulary has a gap before id {i}", path=str(folder))
    return pieces, _space_prefix(tok)


def _space_prefix(tok: dict[str, Any]) -> bool:
    """Does the tokenizer put "▁" before the text (SentencePiece's add_dummy_prefix)?"""
    steps = []
    for part in (tok.get("normalizer"), tok.get("pre_tokenizer")):
        if part:
            steps += part.get("normalizers") or part.get("pretokenizers") or [part]
    for step in steps:
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never") != "never"
    return False


def _add_spm_vocab(gguf: Any, writer: Any, folder: Path, tok: dict[str, Any], vocab_size: int) -> None:
    pieces, prefix = _spm_pieces(gguf, folder, tok)
    tokens = [p for p, _, _ in pieces]
    scores = [s for _, s, _ in pieces]
    types = [t for _, _, t in pieces]

    def pad_to(n: int) -> None:  # ids no piece or added token has: unused placeholders
        while len(tokens) < n:
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)

    for a in sorted(tok.get("added_tokens", []), key=lambda a: a["id"]):
        i = a["id"]
        kind = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
        if i < len(tokens):  # a piece of the model declared special (<s>, </s>, <unk>): keep its piece
            if types[i] == gguf.TokenType.NORMAL:
                types[i] = kind
            continue
        pad_to(i)
        tokens.append(a["content"])
        scores.append(-1000.0)
        types.append(kind)
    if len(tokens) > vocab_size:
        raise InvalidArtifactError(f"the tokenizer has {len(tokens)} tokens but the model's vocab_size is "
                                   f"{vocab_size}: the folder's tokenizer does not belong to this model",
                                   path=str(folder))
    pad_to(vocab_size)  # embedding rows padded beyond the tokenizer
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(prefix)
    special = gguf.SpecialVocab(folder, load_merges=False, n_vocab=vocab_size)
    _add_bos_flag(writer, special, folder)
    special.add_to_gguf(writer)


# Types a tensor can take when its rows are not a whole number of 256-value k-quant blocks (32-value blocks).
FALLBACK_TYPES = ("Q4_0", "Q4_1", "IQ4_NL", "Q5_0", "Q5_1", "Q8_0", "F16")


def _block(gguf: Any, type_name: str) -> int:
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]


def _bits(gguf: Any, type_name: str) -> float:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return size * 8 / block


def quantize_gguf(f16_path: str | Path, output_path: str | Path, quantization: str, *, threads: int = 0,
                  fallback_type: str = "") -> Path:
    """llama.cpp's quantizer on an F16/F32 GGUF, written atomically.

    ``fallback_type``: the least precision for weights whose rows do not fit the requested type's blocks
    (for k-quants, any width that is not a multiple of 256). llama.cpp gives those Q5_0 under Q4_K_M, Q5_1
    under Q5_K_M; each one it gave fewer bits per weight than ``fallback_type`` is quantized again as that
    type (the ones it already raised, such as attn_v as Q8_0, stay). SmolLM2-135M's 576 width sends 181 of
    its 272 tensors there, so this trades size for fidelity.
    """
    if quantization not in QUANT_TYPES:
        raise ConfigError(f"unknown quantization {quantization!r}; use one of {list(QUANT_TYPES)}",
                          field="quantization_type", value=quantization)
    check_choice("fallback_type", fallback_type, ("", *FALLBACK_TYPES))  # empty: llama.cpp's choice
    llama_cpp = require("llama_cpp", extra="export", feature="quantizing GGUF")
    gguf = require("gguf", extra="export", feature="quantizing GGUF")
    out = Path(output_path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")

    def run(overrides: dict[str, str]) -> None:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = QUANT_TYPES[quantization][0]
        params.nthread = threads or (os.cpu_count() or 1)
        patterns = [(("^" + re.escape(n) + "$").encode(), kind) for n, kind in overrides.items()]  # alive for C
        if patterns:
            table = (llama_cpp.llama_model_tensor_override * (len(patterns) + 1))()
            for slot, (pattern, kind) in zip(table, patterns, strict=False):
                slot.pattern, slot.type = pattern, int(gguf.GGMLQuantizationType[kind])
            table[len(patterns)].pattern = None  # the list ends with an empty pattern
            params.tt_overrides = table
        code = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(tmp).encode(), params)
        if code != 0:
            raise InvalidArtifactError(f"llama.cpp could not quantize {f16_path} to {quantization} (code {code})")

    try:
        run({})
        if fallback_type:
            # every fallback pinned (llama.cpp's per-layer choices depend on what it chose before, so raising
            # some would move others): the higher of its own type and the floor
            chosen = inspect_gguf(tmp, quantization).fallbacks
            floor = {n: max(kind, fallback_type, key=lambda k: _bits(gguf, k)) for n, kind in chosen.items()}
            raised = sum(kind != chosen[n] for n, kind in floor.items())
            if raised:
                log.info("%d fallback tensors raised to %s", raised, fallback_type)
                run(floor)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_gguf(path: str | Path) -> Any:
    """A ``gguf.GGUFReader`` over ``path``; a missing, truncated or corrupt file is a clear error, not a
    numpy or struct exception from inside the reader."""
    gguf = require("gguf", extra="export", feature="reading GGUF")
    file = Path(path)
    if not file.is_file():
        raise ArtifactNotFoundError(f"GGUF file {str(file)!r} does not exist", path=str(file))
    try:
        return gguf.GGUFReader(str(file))
    except Exception as exc:  # the reader parses untrusted bytes: any failure means the file is not usable
        detail = f"{type(exc).__name__}: {exc}"[:200]
        raise InvalidArtifactError(f"{str(file)!r} is not a readable GGUF file ({detail}); it is truncated or not "
                                   "GGUF at all: export it again (aptops export gguf)", path=str(file)) from None


def inspect_gguf(path: str | Path, quantization: str) -> GgufResult:
    """The tensor types llama.cpp really wrote, and which 2-D weights missed the requested family.

    A weight of another type is a *fallback* when its rows (``ne0``) are not a whole number of the requested
    type's blocks (256 values for k-quants, 32 for the others): llama.cpp had to pick something else. When the
    rows fit, the other type is llama.cpp's deliberate choice of more bits (``output.weight`` as Q6_K under
    Q4_0, say) and is listed as *upgraded*, not as a fallback.
    """
    gguf = require("gguf", extra="export", feature="reading GGUF")
    reader = read_gguf(path)
    counts: Counter[str] = Counter()
    fallbacks: dict[str, str] = {}
    upgraded: dict[str, str] = {}
    wanted = QUANT_TYPES[quantization][1]
    block = _block(gguf, wanted[0])
    for t in reader.tensors:
        kind = t.tensor_type.name
        counts[kind] += 1
        is_matrix = len([d for d in t.shape if d > 1]) >= 2
        if is_matrix and kind not in wanted and not re.search(r"norm", t.name):
            (upgraded if int(t.shape[0]) % block == 0 else fallbacks)[t.name] = kind
    return GgufResult(Path(path), quantization, dict(counts), fallbacks, Path(path).stat().st_size, upgraded)
