"""Issue 32: small, damaged or hostile model folders are refused before export allocates by their claims, with
the file and the claim named, and nothing left beside --out (they hung at 3-7 GB, or converted wrong bytes)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from aptops.core.errors import InvalidArtifactError
from aptops.export import ExportConfig, export_to_gguf


@pytest.fixture
def model(tiny_llama, tmp_path):
    return shutil.copytree(tiny_llama, tmp_path / "model")


def _set(model, **values):
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, **values}))


def _export(model, tmp_path, **config):
    with pytest.raises(InvalidArtifactError) as info:
        export_to_gguf(model, output_dir=tmp_path / "out", config=ExportConfig(**config))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no output, no temp file, no lock
    return str(info.value)


@pytest.mark.timeout(120)
def test_sizes_in_config_json_are_checked_against_the_weights(model, tmp_path):
    _set(model, num_hidden_layers=1_000_000)
    assert "num_hidden_layers=1000000 but the weights hold blocks 0-1" in _export(model, tmp_path)
    _set(model, num_hidden_layers=2, vocab_size=20_000_000)
    assert "vocab_size=20000000" in _export(model, tmp_path) and "the embedding is" in _export(model, tmp_path)
    _set(model, vocab_size="many")
    assert "vocab_size='many' is not a positive integer" in _export(model, tmp_path)


def test_blocks_of_different_mlp_widths_are_refused_before_converting(model, tmp_path):
    """Per-layer pruning leaves blocks of different MLP widths; a GGUF holds one feed_forward_length, so the export
    names the blocks and widths instead of failing later inside transformers."""
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    for proj, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
        name = f"model.layers.1.mlp.{proj}.weight"
        weights[name] = weights[name].narrow(dim, 0, weights[name].shape[dim] // 2).contiguous()
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    said = _export(model, tmp_path)
    assert "the MLP of block(s) [1] is" in said and "blocks of different MLP widths" in said


def _rewrite_header(path, change):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = change(json.loads(data[8:8 + n]))
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)  # same length: the tensors' bytes stay where they were
    assert len(raw) == n
    path.write_bytes(data[:8] + raw + data[8 + n:])


def test_overlapping_offsets_are_refused_even_without_verification(model, tmp_path):
    def overlap(header):
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        a, b = header[names[0]], header[names[1]]
        size = b["data_offsets"][1] - b["data_offsets"][0]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + size]  # b read from a's bytes
        return header

    _rewrite_header(model / "model.safetensors", overlap)
    message = _export(model, tmp_path, verify=False)
    assert "model.safetensors is not a valid safetensors file" in message and "overlap" in message


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "adapter_config.json"])
def test_config_files_that_are_not_json_are_named(model, tmp_path, name):
    (model / name).write_text("{not json")
    if name == "adapter_config.json":  # a LoRA adapter folder: weights of its own, a damaged config
        shutil.copy(model / "model.safetensors", model / "adapter_model.safetensors")
    assert f"{name}' is not valid JSON" in _export(model, tmp_path)


def test_an_adapter_whose_base_is_on_a_hub_that_never_answers_fails_in_bounded_time(model, tmp_path):
    """Issue 32: a LoRA adapter naming a Hub id on an endpoint that accepts and never answers hung past 300 s."""
    import socket
    import threading
    import time

    from tests.cli import aptops

    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(stalled.accept()) for _ in range(16)], daemon=True).start()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA",
                                                             "base_model_name_or_path": "some-org/some-base"}))
    shutil.copy(model / "model.safetensors", adapter / "adapter_model.safetensors")
    start = time.monotonic()
    proc = aptops("export", "gguf", str(adapter), "--out", str(tmp_path / "out"),
                  env={"HF_ENDPOINT": f"http://127.0.0.1:{stalled.getsockname()[1]}", "HF_HUB_DOWNLOAD_TIMEOUT": "2",
                       "HF_HUB_OFFLINE": "0"})
    took = time.monotonic() - start
    stalled.close()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "some-org/some-base" in proc.stderr and "cannot be found" in proc.stderr
    assert took < 90, took
    assert not (tmp_path / "out").exists()


def test_a_gguf_llama_cpp_refuses_says_llama_cpp_s_reason(tmp_path):
    """llama-cpp-python silences llama.cpp while it loads (verbose=False): the refusal carries llama.cpp's own words
    instead of a bare "Failed to load model from file"."""
    import gguf
    import numpy as np
    import pytest

    from aptops.core.errors import InvalidArtifactError
    from aptops.eval.llama_cpp import load_llama
    from aptops.lm.llamacpp import open_llama

    path = tmp_path / "unknown-arch.gguf"
    writer = gguf.GGUFWriter(str(path), "nonesuch")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InvalidArtifactError, match=r"llama\.cpp says: .*unknown model architecture: 'nonesuch'"):
        open_llama(path, n_ctx=64)
    with pytest.raises(InvalidArtifactError, match=r"unknown model architecture"):
        load_llama(path, n_ctx=64)
