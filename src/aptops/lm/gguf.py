"""Hugging Face causal LM folder → GGUF, written with the ``gguf`` package, quantized by llama.cpp.

The conversion itself is aptops' (which architectures and how: the table in :mod:`aptops.lm.gguf_architectures`;
tensor names through ``gguf.TensorNameMap``, metadata keys through ``gguf.GGUFWriter`` and ``gguf.Metadata``,
merges and special tokens through ``gguf.SpecialVocab``). It streams: every tensor is planned from the
safetensors headers, then read, converted and written one at a time, so memory stays near the largest tensor's
output copy whatever the model's size (``bench/gguf_export.py``). Quantization is llama.cpp's
own ``llama_model_quantize`` through ``llama-cpp-python``. What llama.cpp actually wrote is then read back
with ``gguf.GGUFReader``: llama.cpp silently falls back to other types when a row width does not suit the
requested one (k-quants need multiples of 256, every block type multiples of 32), and the file header
still names the requested type, so aptops counts the tensor types itself and reports the fallbacks.

An architecture beyond the table goes through llama.cpp's own ``convert_hf_to_gguf.py`` of the same llama.cpp
version (:func:`llama_cpp_converter`: ``make setup`` and the export image install it from the locked
llama-cpp-python source), and comes out through the same verification: :func:`converter_for` says which converter
a model takes, and the export stage writes it into ``verify.json`` and its report.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.artifacts import read_json
from aptops.core.config import check_choice
from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, ConfigError, InvalidArtifactError
from aptops.core.formats import check_gguf_bounds, safetensors_header
from aptops.core.logging import progress

log = logging.getLogger(__name__)

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


# safetensors dtypes the converter reads, as numpy reads their bytes (BF16 as its raw 16 bits)
_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}
_EXPERT = re.compile(r"^(?P<prefix>.+\.experts)\.(?P<index>\d+)\.(?P<proj>\w+)\.weight$")
# stacked experts: transformers 5's experts.gate_up_proj / down_proj, GraniteMoE's input_linear / output_linear
_FUSED_EXPERTS = re.compile(r"^model\.layers\.(?P<bid>\d+)\.\w+\.(?:experts\.(?P<proj>gate_up_proj|down_proj)|"
                            r"(?P<legacy>input_linear|output_linear))(?:\.weight)?$")
# the converter's output types, as numpy holds them (BF16 as its raw 16 bits)
OUTTYPE_NUMPY = {"F32": "float32", "F16": "float16", "BF16": "uint16"}
OUTTYPES = tuple(OUTTYPE_NUMPY)


@dataclass(frozen=True)
class SourceTensor:
    """Where one tensor's bytes are in a safetensors file (read with plain reads, nothing kept mapped)."""

    file: Path
    offset: int
    dtype: str
    shape: tuple[int, ...]

    def read(self, rows: tuple[int, int] | None = None) -> Any:
        """The tensor, or rows ``[start, stop)`` of its first dimension, as numpy (BF16 as uint16 bits)."""
        np = require("numpy", extra="export", feature="writing GGUF")
        start, stop = rows or (0, self.shape[0] if self.shape else 1)
        row = math.prod(self.shape[1:])
        count = (stop - start) * row
        dtype = np.dtype(_SAFETENSORS_DTYPES[self.dtype])
        with self.file.open("rb") as f:
            f.seek(self.offset + start * row * dtype.itemsize)
            data = np.fromfile(f, dtype=dtype, count=count)
        if data.size != count:
            raise InvalidArtifactError(f"{self.file.name} ends inside a tensor: the file is truncated; download or "
                                       "save the model again", path=str(self.file))
        return data.reshape((stop - start, *self.shape[1:]) if self.shape else ())


def safetensors_index(folder: Path) -> dict[str, SourceTensor]:
    """Every tensor of a model folder's safetensors files, from their headers alone.

    The files are the ones ``model.safetensors.index.json`` names, or every ``*.safetensors`` but a LoRA
    adapter's. A missing shard or a quantized checkpoint is refused here, before anything is written."""
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        index = read_json(index_file)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) and v == Path(v).name and v not in ("", ".", "..") for v in weight_map.values()):
            raise InvalidArtifactError(f"{index_file.name} has no weight_map of tensor -> shard file names in the "
                                       "folder; save or download the model again", path=str(index_file))
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ArtifactNotFoundError(f"{str(folder)!r} lacks shards its index names: {missing[:3]}; the download "
                                        "or copy is incomplete", path=str(folder))
        files = [folder / n for n in names]
    else:
        files = sorted(f for f in folder.glob("*.safetensors") if f.name != "adapter_model.safetensors")
    if not files:
        raise InvalidArtifactError(f"{str(folder)!r} has no model weights, only a LoRA adapter: export the adapter "
                                   "folder itself (aptops export gguf ADAPTER) and its base is merged in", path=str(folder))
    tensors: dict[str, SourceTensor] = {}
    for file in files:
        # every claim of the header (length, offsets, shapes, dtypes) checked against the file before a byte of
        # a tensor is read: a damaged or hostile header is refused here, never converted from the wrong bytes
        for name, meta in safetensors_header(file).items():
            if meta.dtype not in _SAFETENSORS_DTYPES:
                raise InvalidArtifactError(
                    f"tensor {name!r} in {file.name} is {meta.dtype}: GGUF export reads F32, F16 and BF16 weights; "
                    "a quantized checkpoint (GPTQ, AWQ, bitsandbytes, FP8) must be dequantized and saved first",
                    path=str(file))
            tensors[name] = SourceTensor(file, meta.offset, meta.dtype, meta.shape)
    return tensors


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def check_sizes(cfg: dict[str, Any], tensors: dict[str, SourceTensor], folder: Path) -> None:
    """The sizes config.json claims, checked against the weights before anything is allocated by them: a
    ``num_hidden_layers`` or ``vocab_size`` the tensors do not have is a damaged or foreign config, not a
    model to build a million-block name map or a 20-million-token vocabulary for.

    Raises:
        InvalidArtifactError: a size that is not a positive integer or disagrees with the weights.
    """
    where = str(folder / "config.json")
    for key in ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size", "intermediate_size"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidArtifactError(f"{where!r}: {key}={value!r} is not a positive integer", path=where)
    blocks = {int(m.group(1)) for name in tensors if (m := _LAYER.search(name))}
    if blocks != set(range(cfg["num_hidden_layers"])):
        held = f"blocks 0-{max(blocks)}" if blocks and blocks == set(range(max(blocks) + 1)) else f"{len(blocks)} blocks"
        raise InvalidArtifactError(f"{where!r} says num_hidden_layers={cfg['num_hidden_layers']} but the weights hold "
                                   f"{held}: the config does not belong to these weights", path=where)
    widths = {int(m.group(1)): int(t.shape[1]) for name, t in tensors.items()
              if name.endswith(".mlp.down_proj.weight") and (m := _LAYER.search(name)) and len(t.shape) == 2}
    other = sorted(b for b, w in widths.items() if w != cfg["intermediate_size"])
    if other:
        raise InvalidArtifactError(
            f"{where!r} says intermediate_size={cfg['intermediate_size']} but the MLP of block(s) "
            f"{other[:8]}{' ...' if len(other) > 8 else ''} is {widths[other[0]]} wide: a GGUF holds one "
            "feed_forward_length for every block, so blocks of different MLP widths (per-layer pruning) cannot be "
            "written; prune every block to the same width", path=where)
    embed = next((t for name, t in tensors.items() if name.endswith("embed_tokens.weight")), None)
    if embed is not None and tuple(embed.shape) != (cfg["vocab_size"], cfg["hidden_size"]):
        raise InvalidArtifactError(f"{where!r} says vocab_size={cfg['vocab_size']}, hidden_size={cfg['hidden_size']} "
                                   f"but the embedding is {tuple(embed.shape)}: the config does not belong to these "
                                   "weights", path=where)


_CHUNK = 1 << 22  # values converted at a time: a large tensor never exists in F32 all at once


def _encode_source(gguf: Any, src: SourceTensor, outtype: str, shift: float = 0.0) -> Any:
    """``src`` read and converted to ``outtype`` a band of rows at a time (the result is the one full copy)."""
    np = require("numpy", extra="export", feature="writing GGUF")
    if len(src.shape) < 2 or math.prod(src.shape) <= _CHUNK:
        return _encode(gguf, src.read(), src.dtype, outtype, shift)
    out = np.empty(src.shape, dtype=OUTTYPE_NUMPY[outtype])
    step = max(_CHUNK // math.prod(src.shape[1:]), 1)
    for start in range(0, src.shape[0], step):
        stop = min(start + step, src.shape[0])
        out[start:stop] = _encode(gguf, src.read((start, stop)), src.dtype, outtype, shift)
    return out


def _encode(gguf: Any, data: Any, dtype: str, outtype: str, shift: float = 0.0) -> Any:
    """One source tensor in the GGUF's type: BF16 bits stay bits for BF16, anything else goes through F32."""
    np = require("numpy", extra="export", feature="writing GGUF")
    if outtype == "BF16" and dtype == "BF16" and not shift:
        return data
    f32 = (data.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else data.astype(np.float32, copy=False)
    if shift:
        f32 = f32 + np.float32(shift)
    if outtype == "BF16":
        return gguf.quants.quantize(f32, gguf.GGMLQuantizationType.BF16).view(np.uint16)
    return f32.astype(np.float16) if outtype == "F16" else f32


@dataclass
class _Planned:
    """One GGUF tensor: its name, shape and type, and how to make it from its sources when it is written."""

    name: str
    shape: tuple[int, ...]
    outtype: str
    make: Any  # () -> np.ndarray in the GGUF's type

    def nbytes(self) -> int:
        np = require("numpy", extra="export", feature="writing GGUF")
        return math.prod(self.shape) * np.dtype(OUTTYPE_NUMPY[self.outtype]).itemsize


def _plan(gguf: Any, tensors: dict[str, SourceTensor], arch: Any, cfg: dict[str, Any], names: Any, outtype: str,
          extra: list[tuple[str, Any]]) -> list[_Planned]:
    """Every tensor of the GGUF, in order, without reading any weight."""
    np = require("numpy", extra="export", feature="writing GGUF")
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    tied = bool(cfg.get("tie_word_embeddings"))
    # the MoE routers stay F32, as llama.cpp's converter and quantizer keep them
    f32_names = {gguf.TENSOR_NAMES[k].removeprefix("blk.{bid}.")
                 for k in (gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP)}

    def kind_for(new: str, ndim: int) -> str:
        base = re.sub(r"^blk\.\d+\.", "", new).rsplit(".", 1)[0]
        return "F32" if ndim <= 1 or new.endswith("_norm.weight") or base in f32_names else outtype

    def gguf_name(hf: str) -> str:
        new = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise InvalidArtifactError(f"tensor {hf!r} has no GGUF name for {arch.gguf}; the checkpoint does not look "
                                       f"like a plain {cfg['architectures'][0]}")
        return new

    def single(hf: str, src: SourceTensor, heads: int = 0) -> _Planned:
        new = gguf_name(hf)
        kind = kind_for(new, len(src.shape))
        shift = arch.norm_shift if hf.endswith("norm.weight") else 0.0
        per_head = arch.qkv_per_head and ".query_key_value." in hf

        def make() -> Any:
            data = _encode_source(gguf, src, kind, shift)
            if per_head:  # (head, q|k|v, dim) rows -> (q|k|v, head, dim)
                return np.ascontiguousarray(data.reshape(n_head, 3, -1, *data.shape[1:]).swapaxes(0, 1)
                                            .reshape(data.shape))
            return _permute(data, heads) if heads else data
        return _Planned(new, src.shape, kind, make)

    def stacked(hf: str, parts: list[SourceTensor]) -> _Planned:
        new = gguf_name(hf)
        kind = kind_for(new, 3)
        shape = (len(parts), *parts[0].shape)

        def make() -> Any:
            out = np.empty(shape, dtype=OUTTYPE_NUMPY[kind])
            for i, part in enumerate(parts):
                out[i] = _encode_source(gguf, part, kind)
            return out
        return _Planned(new, shape, kind, make)

    def sliced(new: str, src: SourceTensor, rows: slice) -> _Planned:  # half of a fused [experts, 2 x ff, hidden]
        kind = kind_for(new, 3)
        return _Planned(new, (src.shape[0], rows.stop - rows.start, src.shape[2]), kind,
                        lambda: np.ascontiguousarray(_encode_source(gguf, src, kind)[:, rows, :]))

    plan = [_Planned(name, data.shape, "F32", lambda data=data: data) for name, data in extra]
    groups: dict[tuple[str, str], dict[int, SourceTensor]] = {}
    for hf, src in tensors.items():
        if hf.endswith(("rotary_emb.inv_freq", "attention.masked_bias")) or (tied and hf == "lm_head.weight") or (
                hf.endswith("attention.bias") and len(src.shape) == 4):  # older GPT-NeoX files keep their causal mask
            continue
        expert = _EXPERT.match(hf) if arch.experts else None
        fused = _FUSED_EXPERTS.match(hf) if arch.experts and len(src.shape) == 3 else None
        if expert:
            groups.setdefault((expert["prefix"], expert["proj"]), {})[int(expert["index"])] = src
        elif fused and (fused["proj"] or fused["legacy"]) in ("gate_up_proj", "input_linear"):  # gate rows, up rows
            half, bid = src.shape[1] // 2, int(fused["bid"])
            for tensor, rows in ((gguf.MODEL_TENSOR.FFN_GATE_EXP, slice(0, half)),
                                 (gguf.MODEL_TENSOR.FFN_UP_EXP, slice(half, 2 * half))):
                plan.append(sliced(gguf.TENSOR_NAMES[tensor].format(bid=bid) + ".weight", src, rows))
        elif fused:
            new = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.FFN_DOWN_EXP].format(bid=int(fused["bid"])) + ".weight"
            plan.append(_Planned(new, src.shape, kind_for(new, 3), lambda src=src, new=new: _encode_source(
                gguf, src, kind_for(new, 3))))
        else:
            heads = (n_head if hf.endswith("q_proj.weight") else n_kv if hf.endswith("k_proj.weight") else 0)
            plan.append(single(hf, src, heads if arch.permute_qk else 0))
    if arch.experts:
        plan += _stack_experts(groups, cfg, stacked)
    embed = next((hf for hf in tensors if hf.endswith(("embed_tokens.weight", "embed_in.weight"))), None)
    if tied and arch.output_required and embed is not None:  # llama.cpp wants its own output matrix
        out = single(embed, tensors[embed])
        plan.append(_Planned(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight", out.shape, out.outtype, out.make))
    return plan


def _stack_experts(groups: dict[tuple[str, str], dict[int, SourceTensor]], cfg: dict[str, Any], stacked: Any
                   ) -> list[_Planned]:
    """One 3-D tensor per layer and projection from the per-expert ones, refused when any expert is missing."""
    from aptops.lm.gguf_architectures import config_value

    n_expert = int(config_value(cfg, "num_local_experts", "num_experts") or 0)
    layers = {int(m[1]) for prefix, _ in groups if (m := re.search(r"layers\.(\d+)\.", prefix))}
    projs = {proj for _, proj in groups}
    plan = []
    if groups and len(layers) != cfg["num_hidden_layers"]:
        absent = sorted(set(range(cfg["num_hidden_layers"])) - layers)
        raise InvalidArtifactError(f"the config has {n_expert} experts per layer but layers {absent[:5]} have none in "
                                   "the checkpoint: a shard is missing or the config does not belong to these weights")
    for (prefix, proj), experts in sorted(groups.items()):
        if sorted(experts) != list(range(n_expert)):
            missing = sorted(set(range(n_expert)) - set(experts))
            raise InvalidArtifactError(f"{prefix}.*.{proj}: the config has {n_expert} experts, the checkpoint "
                                       f"{len(experts)} (missing {missing[:5] or 'none'}, extra "
                                       f"{sorted(set(experts) - set(range(n_expert)))[:5] or 'none'}); a shard is "
                                       "missing or the config does not belong to these weights")
        plan.append(stacked(f"{prefix}.{proj}.weight", [experts[i] for i in range(n_expert)]))
    if groups and any(len([1 for (_, p) in groups if p == proj]) != len(layers) for proj in projs):
        raise InvalidArtifactError(f"expert projections {sorted(projs)} are not in every layer")
    return plan


def llama_cpp_converter() -> Path | None:
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py``: ``APTOPS_LLAMA_CPP_CONVERTER`` (a llama.cpp source
    folder), else ``<environment>/share/llama.cpp`` where setup puts it; ``None`` when neither has it."""
    configured = os.environ.get("APTOPS_LLAMA_CPP_CONVERTER")
    folder = Path(configured) if configured else Path(sys.prefix) / "share" / "llama.cpp"
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    if configured:
        raise ConfigError(f"APTOPS_LLAMA_CPP_CONVERTER={configured!r} holds no convert_hf_to_gguf.py: point it at a "
                          "llama.cpp source folder", field="APTOPS_LLAMA_CPP_CONVERTER", value=configured)
    return None


def converter_for(model_path: str | Path) -> dict[str, str]:
    """Which converter writes this model: ``{"converter": "aptops"}`` for an architecture of the table, else
    llama.cpp's (``{"converter": "llama.cpp", "script": ..., "version": ...}``) when it is installed.

    Raises:
        ConfigError: the architecture is in no table and llama.cpp's converter is not installed.
    """
    from aptops.lm.loading import check_model_folder

    return _converter_for_config(read_json(check_model_folder(model_path) / "config.json"))


def _converter_for_config(cfg: dict[str, Any]) -> dict[str, str]:
    from aptops.lm.gguf_architectures import ARCHITECTURES

    name = (cfg.get("architectures") or ["?"])[0]
    if name in ARCHITECTURES:
        return {"converter": "aptops"}
    folder = llama_cpp_converter()
    if folder is None:
        raise ConfigError(f"architecture {name!r} is not in aptops' GGUF table ({', '.join(sorted(ARCHITECTURES))}) and "
                          "llama.cpp's converter is not installed: run scripts/llama_cpp_converter.py (make setup does) "
                          "or set APTOPS_LLAMA_CPP_CONVERTER to a llama.cpp source folder", field="architecture",
                          value=name)
    version = (folder / "VERSION").read_text().strip() if (folder / "VERSION").is_file() else "source folder"
    return {"converter": "llama.cpp", "script": str(folder / "convert_hf_to_gguf.py"), "version": version,
            "architecture": name}


def convert_with_llama_cpp(model_path: str | Path, output_path: str | Path, *, outtype: str = "F16") -> Path:
    """Write ``model_path`` as a GGUF with llama.cpp's own converter (its own ``gguf-py``), atomically.

    Raises:
        InvalidArtifactError: the converter failed; its last words are in the message.
    """
    folder = llama_cpp_converter()
    if folder is None:
        raise ConfigError("llama.cpp's converter is not installed (scripts/llama_cpp_converter.py)",
                          field="architecture")
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    log.info("converting %s with llama.cpp's convert_hf_to_gguf.py (an architecture beyond aptops' table)", model_path)
    try:
        run = subprocess.run([sys.executable, str(folder / "convert_hf_to_gguf.py"), str(model_path), "--outfile",
                              str(tmp), "--outtype", outtype.lower()], capture_output=True, text=True, check=False,
                             env={k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"})
        if run.returncode != 0 or not tmp.is_file():
            said = [line for line in (run.stderr or run.stdout).strip().splitlines() if line.strip()][-3:]
            raise InvalidArtifactError(f"llama.cpp's converter could not convert {str(model_path)!r}: "
                                       f"{' | '.join(said) or f'exit status {run.returncode}'}", path=str(model_path))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def convert_to_gguf(model_path: str | Path, output_path: str | Path, *, outtype: str = "F16",
                    vocab_type: str = "auto") -> Path:
    """Write ``model_path`` (a HF causal LM folder with safetensors) as an F32, F16 or BF16 GGUF file.

    Tensors are read one at a time from the safetensors files and written as they are made, so memory holds
    about the largest tensor (an expert stack for MoE models), whatever the model's size; BF16 weights stay
    BF16 bits for ``outtype="BF16"`` and pass through F32 one tensor at a time otherwise. The architecture is
    a row of :data:`aptops.lm.gguf_architectures.ARCHITECTURES`; any other goes through llama.cpp's converter
    (:func:`convert_with_llama_cpp`) when it is installed, and is refused with the list when it is not.

    ``vocab_type``: ``bpe`` (byte-level BPE, llama.cpp's ``gpt2`` tokenizer), ``spm`` (SentencePiece BPE,
    llama.cpp's ``llama`` tokenizer: Llama 2, Mistral v0.1, TinyLlama ...) or ``auto`` (read off the folder).
    """
    gguf = require("gguf", extra="export", feature="writing GGUF")
    np = require("numpy", extra="export", feature="writing GGUF")
    from aptops.lm.gguf_architectures import arch_for, rope_dimensions, rope_settings, write_keys, write_rope
    from aptops.lm.loading import check_model_folder

    if outtype not in OUTTYPES:
        raise ConfigError(f"outtype {outtype!r}: the converter writes {', '.join(OUTTYPES)}; quantize afterwards",
                          field="outtype", value=outtype)
    folder = check_model_folder(model_path)
    cfg = read_json(folder / "config.json")  # a JSON object: check_model_folder parsed it
    if _converter_for_config(cfg)["converter"] == "llama.cpp":
        return convert_with_llama_cpp(folder, output_path, outtype=outtype)
    _, arch = arch_for(cfg)
    tensors = safetensors_index(folder)
    check_sizes(cfg, tensors, folder)
    tok_file = folder / "tokenizer.json"
    tok = read_json(tok_file) if tok_file.is_file() else {}
    kind = vocab_kind(folder, tok, vocab_type)
    pre = pre_tokenizer_name(tok) if kind == "bpe" else "default"

    n_layer, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    vocab_size = cfg["vocab_size"]
    theta, scaling, swa_theta = rope_settings(cfg, arch.rope_types)
    rope_dims = rope_dimensions(cfg, head_dim)
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    arch_enum = _arch_enum(gguf, arch.gguf)
    writer = gguf.GGUFWriter(str(tmp), arch.gguf)
    try:
        writer.add_context_length(cfg.get("max_position_embeddings", 2048))
        writer.add_embedding_length(hidden)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(cfg["intermediate_size"])
        writer.add_head_count(n_head)
        # a per-head fused qkv (GPT-NeoX) has a key/value head per query head, whatever else the config carries
        writer.add_head_count_kv(n_head if arch.qkv_per_head else cfg.get("num_key_value_heads") or n_head)
        writer.add_rope_dimension_count(rope_dims)
        writer.add_rope_freq_base(theta)
        if swa_theta is not None:
            writer.add_rope_freq_base_swa(swa_theta)
        extra = write_rope(gguf, writer, cfg, scaling, rope_dims, theta)
        writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        write_keys(writer, arch, cfg)
        writer.add_vocab_size(vocab_size)
        writer.add_file_type(QUANT_TYPES[outtype][0])
        if kind == "bpe":
            _add_vocab(gguf, writer, folder, tok, vocab_size, pre)
        else:
            _add_spm_vocab(gguf, writer, folder, tok, vocab_size)

        plan = _plan(gguf, tensors, arch, cfg, gguf.get_tensor_name_map(arch_enum, n_layer), outtype, extra)
        for t in plan:
            raw = gguf.GGMLQuantizationType[t.outtype]
            writer.add_tensor_info(t.name, t.shape, OUTTYPE_NUMPY[t.outtype], t.nbytes(), raw_dtype=raw)
        _add_model_metadata(gguf, writer, folder)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in progress(plan, desc="gguf conversion", unit="tensor", log_every=max(len(plan) // 10, 1), logger=log):
            data = t.make()
            if data.shape != t.shape:
                raise InvalidArtifactError(f"{t.name}: made {data.shape}, planned {t.shape}")
            writer.write_tensor_data(np.ascontiguousarray(data))
            del data  # freed before the next tensor is made
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _add_model_metadata(gguf: Any, writer: Any, folder: Path) -> None:
    """``general.*`` as llama.cpp's converter writes them: name, basename, finetune, size label, license, base
    models ... read by ``gguf.Metadata`` from the folder's config and model card."""
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, folder, None, total)
    if meta.name is None:
        meta.name = folder.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)


def _permute(weights: Any, n_head: int) -> Any:
    """HF stores Q/K rows as two rotary halves per head; llama.cpp wants them interleaved."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


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
    """``add_bos_token`` as the folder's tokenizer behaves, when tokenizer_config does not say.

    The post-processor of a ``tokenizer.json`` decides it (read with ``tokenizers``, without loading
    transformers and torch into the converter); for a lone ``tokenizer.model`` the class defaults of the
    tokenizer transformers converts it to decide, so transformers is asked."""
    if "bos" in special.add_special_token:
        return
    bos = special.special_token_ids.get("bos")
    if (folder / "tokenizer.json").is_file():
        tokenizers = require("tokenizers", extra="export", feature="reading the tokenizer")
        ids = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")).encode("a").ids
    else:
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
    check_gguf_bounds(file)  # every count and length it claims fits the file: the reader allocates by them
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
