"""Hostile and damaged safetensors and GGUF files are refused in bounded time and memory, with the file and the
broken claim named (issue 32: header lengths of 2^40 and 2^64, a list for a header, negative, string, float and
overflowing shapes, overlapping and negative offsets, an array of 2^60 items in a 133-byte GGUF)."""

from __future__ import annotations

import json
import resource
import struct

import numpy as np
import pytest

from aptops.core.errors import InvalidArtifactError
from aptops.core.formats import check_gguf_bounds, safetensors_header
from aptops.lm.gguf import read_gguf
from tests.models import write_tiny_gguf


def _safetensors(path, header, data=b"", length=None):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _ok(shape=(2, 3), offsets=(0, 24), dtype="F32"):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_a_valid_file_reads_with_absolute_offsets(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.ones((2, 3), np.float32), "b": np.zeros(4, np.float16)}, str(tmp_path / "m.safetensors"),
              metadata={"format": "pt"})
    tensors = safetensors_header(tmp_path / "m.safetensors")
    assert {n: (t.dtype, t.shape, t.nbytes) for n, t in tensors.items()} == {"a": ("F32", (2, 3), 24),
                                                                             "b": ("F16", (4,), 8)}
    data = (tmp_path / "m.safetensors").read_bytes()
    a = tensors["a"]
    assert np.frombuffer(data[a.offset:a.offset + a.nbytes], np.float32).tolist() == [1.0] * 6


@pytest.mark.parametrize("header, length, message", [
    ({"a": _ok()}, 1 << 40, "header claims 1,099,511,627,776 bytes"),
    ({"a": _ok()}, (1 << 64) - 1, "header claims"),
    ([1, 2], None, "a JSON list, not an object"),
    ({"a": _ok(shape=(-2, 3))}, None, "not a list of non-negative integers"),
    ({"a": _ok(shape=("2", 3))}, None, "not a list of non-negative integers"),
    ({"a": _ok(shape=(2.0, 3))}, None, "not a list of non-negative integers"),
    ({"a": _ok(shape=(1 << 62, 1 << 62))}, None, "not a list of non-negative integers"),
    ({"a": _ok(shape=(1 << 40, 3))}, None, "needs 13,194,139,533,312 bytes but its offsets span 24"),
    ({"a": _ok(offsets=(-8, 16))}, None, "not \\[begin, end\\]"),
    ({"a": _ok(offsets=(0, 240))}, None, "spans bytes 0-240 of a 48-byte data section"),
    ({"a": _ok(), "b": _ok(offsets=(16, 40))}, None, "'a' and 'b' overlap"),
    ({"a": _ok(dtype="Q4")}, None, "unknown dtype 'Q4'"),
    ({"a": {"dtype": "F32"}}, None, "needs dtype, shape and data_offsets"),
    ({"a": "tensor"}, None, "needs dtype, shape and data_offsets"),
])
def test_hostile_safetensors_headers_are_refused_naming_the_claim(tmp_path, header, length, message):
    path = _safetensors(tmp_path / "model.safetensors", header, b"\0" * 48, length)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidArtifactError, match=message) as info:
        safetensors_header(path)
    assert "model.safetensors is not a valid safetensors file" in str(info.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: nothing big allocated


def test_a_header_that_is_not_json_or_a_file_too_short(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", 4) + b"\xff{[x")
    with pytest.raises(InvalidArtifactError, match="header is not JSON"):
        safetensors_header(bad)
    bad.write_bytes(b"\x01\x02")
    with pytest.raises(InvalidArtifactError, match="shorter than the 8-byte header length"):
        safetensors_header(bad)


def _gguf_array_claim(path, item_type, count, body=b""):
    key = b"tokenizer.ggml.tokens"
    data = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<IIQ", 9, item_type, count) + body)
    path.write_bytes(data)
    return path


def test_gguf_counts_and_lengths_are_checked_before_a_reader_allocates(tmp_path):
    write_tiny_gguf(tmp_path / "valid.gguf")
    check_gguf_bounds(tmp_path / "valid.gguf")
    assert len(read_gguf(tmp_path / "valid.gguf").tensors) == 2
    huge = _gguf_array_claim(tmp_path / "huge.gguf", 8, 1 << 60, b"\0" * 64)  # 2^60 strings in ~130 bytes
    assert huge.stat().st_size < 140
    for path in (huge, _gguf_array_claim(tmp_path / "floats.gguf", 6, 1 << 40)):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(InvalidArtifactError, match="not a readable GGUF file: metadata entry 0 claims"):
            read_gguf(path)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024
    # 32 MiB of empty strings: each fits the file, together they are no model's vocabulary
    many = _gguf_array_claim(tmp_path / "many.gguf", 8, 4 << 20, b"\0" * (32 << 20))
    with pytest.raises(InvalidArtifactError, match="an array of 4,194,304 items"):
        read_gguf(many)
    # a string longer than the file
    key = b"general.name"
    (tmp_path / "long.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
                                         + struct.pack("<IQ", 8, 1 << 50) + b"abc")
    with pytest.raises(InvalidArtifactError, match="claims 1,125,899,906,842,624 bytes where 3 remain"):
        read_gguf(tmp_path / "long.gguf")
    (tmp_path / "counts.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 1 << 40))
    with pytest.raises(InvalidArtifactError, match="metadata entries and"):
        read_gguf(tmp_path / "counts.gguf")
