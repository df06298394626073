"""Bounded readers for the binary formats users hand to aptops: safetensors headers and GGUF metadata.

Both formats open with a header that says how much to allocate. A hostile or damaged file can claim a
2^40-byte header, an array of 2^60 items or overlapping tensors; these readers check every claim against the
file's real size before memory is committed, and turn every failure into an ``InvalidArtifactError`` naming the
file and what is wrong, so a bad file costs milliseconds and a clear message, never gigabytes or a traceback.

Try it: ``python -c "from aptops.core.formats import safetensors_header; print(safetensors_header('model.safetensors'))"``
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aptops.core.errors import InvalidArtifactError

# bytes per value of every dtype the safetensors format defines
SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F4": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit (the reference reader refuses more)


@dataclass(frozen=True)
class TensorHeader:
    """One tensor as its safetensors header describes it, checked against the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute, from the start of the file
    nbytes: int


def _bad(path: Path, what: str) -> InvalidArtifactError:
    return InvalidArtifactError(f"{path.name} is not a valid safetensors file: {what}; save or download the model "
                                "again", path=str(path))


def safetensors_header(path: str | Path) -> dict[str, TensorHeader]:
    """Every tensor of a safetensors file, its header checked against the file before anything is read.

    Checked: the header length (at most 100 MiB and inside the file), a JSON object of entries, each a known
    dtype, a shape of non-negative integers, offsets in range, a byte length equal to the shape's, and no two
    tensors sharing a byte.

    Raises:
        InvalidArtifactError: the file is truncated, damaged or hostile; the message says which check failed.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _bad(path, f"{size} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_SAFETENSORS_HEADER or 8 + length > size:
            raise _bad(path, f"its header claims {length:,} bytes (the file has {size:,}; the format allows at most "
                             f"{MAX_SAFETENSORS_HEADER:,})")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad(path, f"its header is a JSON {type(header).__name__}, not an object")
    data_start, data_size = 8 + length, size - 8 - length
    tensors: dict[str, TensorHeader] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            if meta is not None and not isinstance(meta, dict):
                raise _bad(path, "__metadata__ is not an object")
            continue
        if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= set(meta):
            raise _bad(path, f"tensor {name!r} needs dtype, shape and data_offsets")
        dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_ITEMSIZE:
            raise _bad(path, f"tensor {name!r} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_count(d) for d in shape):
            raise _bad(path, f"tensor {name!r} has the shape {shape!r}, not a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets):
            raise _bad(path, f"tensor {name!r} has the offsets {offsets!r}, not [begin, end]")
        begin, end = offsets
        if not begin <= end <= data_size:
            raise _bad(path, f"tensor {name!r} spans bytes {begin:,}-{end:,} of a {data_size:,}-byte data section")
        nbytes = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
        if dtype == "F4":
            nbytes = (math.prod(shape) + 1) // 2
        if end - begin != nbytes:
            raise _bad(path, f"tensor {name!r} of shape {tuple(shape)} in {dtype} needs {nbytes:,} bytes but its "
                             f"offsets span {end - begin:,}")
        tensors[name] = TensorHeader(name, dtype, tuple(shape), data_start + begin, nbytes)
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
    for (_, prev_end, prev), (start, _, name) in itertools.pairwise(spans):
        if start < prev_end:
            raise _bad(path, f"tensors {prev!r} and {name!r} overlap")
    return tensors


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 62


# --- GGUF --------------------------------------------------------------------------------------------------------

_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # type -> bytes
_GGUF_STRING, _GGUF_ARRAY = 8, 9
# gguf's reader spends about 1.6 KB and 31 us per array item (446 MiB for a 262,144-token vocabulary, measured):
# the caps keep a hostile file to about 1.7 GB and half a minute, and every real vocabulary fits twice over
MAX_GGUF_ARRAY_ITEMS = 1 << 19  # 2x the largest vocabulary shipped today (Gemma 3: 262,144; Llama 3 merges 280k)
MAX_GGUF_ITEMS = 1 << 20  # over all arrays: Gemma 3's tokens, scores and types are 786,432


class _Cursor:
    def __init__(self, fh: BinaryIO, size: int, path: Path) -> None:
        self.fh, self.size, self.path, self.items = fh, size, path, 0

    def left(self) -> int:
        return self.size - self.fh.tell()

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise self.bad(f"{what} claims {n:,} bytes where {self.left():,} remain")
        return self.fh.read(n)

    def skip(self, n: int, what: str) -> None:
        if n > self.left():
            raise self.bad(f"{what} claims {n:,} bytes where {self.left():,} remain")
        self.fh.seek(n, 1)

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str) -> None:
        self.skip(self.u64(what), what)

    def bad(self, what: str) -> InvalidArtifactError:
        return InvalidArtifactError(f"{str(self.path)!r} is not a readable GGUF file: {what}; it is damaged or not "
                                    "what it claims: export it again (aptops export gguf)", path=str(self.path))


def check_gguf_bounds(path: str | Path) -> None:
    """Walk a GGUF file's header, metadata and tensor infos, checking every length and count it claims
    against the bytes that remain, before a reader allocates anything for them.

    Raises:
        InvalidArtifactError: a count, length or type the file cannot hold; the message names it.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        cur = _Cursor(fh, size, path)
        if cur.take(4, "the magic") != b"GGUF":
            raise cur.bad("it does not start with 'GGUF'")
        version = cur.u32("the version")
        if version not in (2, 3):
            raise cur.bad(f"version {version} (llama.cpp reads 2 and 3)")
        n_tensors, n_kv = cur.u64("the tensor count"), cur.u64("the metadata count")
        if n_kv > cur.left() // 12 or n_tensors > cur.left() // 24:  # the smallest entry of each
            raise cur.bad(f"it claims {n_kv:,} metadata entries and {n_tensors:,} tensors in {size:,} bytes")
        for i in range(n_kv):
            cur.string(f"the key of metadata entry {i}")
            _gguf_value(cur, cur.u32(f"the type of metadata entry {i}"), f"metadata entry {i}", nested=False)
        for i in range(n_tensors):
            cur.string(f"the name of tensor {i}")
            n_dims = cur.u32(f"the dimensions of tensor {i}")
            if n_dims > 4:
                raise cur.bad(f"tensor {i} claims {n_dims} dimensions (GGML has at most 4)")
            cur.skip(8 * n_dims + 4 + 8, f"tensor {i}'s info")


def _gguf_value(cur: _Cursor, kind: int, what: str, *, nested: bool) -> None:
    if kind in _GGUF_SCALARS:
        cur.skip(_GGUF_SCALARS[kind], what)
    elif kind == _GGUF_STRING:
        cur.string(what)
    elif kind == _GGUF_ARRAY and not nested:
        item = cur.u32(f"the item type of {what}")
        count = cur.u64(f"the length of {what}")
        cur.items += count
        if count > MAX_GGUF_ARRAY_ITEMS or cur.items > MAX_GGUF_ITEMS:
            raise cur.bad(f"{what} claims an array of {count:,} items (at most {MAX_GGUF_ARRAY_ITEMS:,} per array "
                          f"and {MAX_GGUF_ITEMS:,} in all are read)")
        if item in _GGUF_SCALARS:
            cur.skip(count * _GGUF_SCALARS[item], what)
        elif item == _GGUF_STRING:
            if count * 8 > cur.left():
                raise cur.bad(f"{what} claims {count:,} strings where {cur.left():,} bytes remain")
            for _ in range(count):
                cur.string(what)
        else:
            raise cur.bad(f"{what} is an array of type {item} (nested arrays or an unknown type)")
    else:
        raise cur.bad(f"{what} has the unknown type {kind}")


# --- model folders -----------------------------------------------------------------------------------------------

MODEL_JSON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "adapter_config.json", "preprocessor_config.json",
                    "processor_config.json", "model.safetensors.index.json")


def check_model_files(folder: str | Path) -> Path:
    """Parse what a Hugging Face folder's loaders would parse, so a damaged file is named here instead of
    surfacing as a traceback from deep inside transformers: every JSON file it uses must be a JSON object, every
    safetensors header must hold (see :func:`safetensors_header`).

    Raises:
        InvalidArtifactError: the file and what is wrong with it.
    """
    from aptops.core.artifacts import read_json_object

    folder = Path(folder)
    for name in MODEL_JSON_FILES:
        if (folder / name).is_file():
            read_json_object(folder / name)
    for path in sorted(folder.glob("*.safetensors")):
        safetensors_header(path)
    return folder
