"""Manifests, decoding, resampling, segments, bad input, batching with missing modalities, balancing."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.multimodal import create_multimodal_model, load_audio, load_manifest
from aptops.multimodal.data import (
    MultimodalDataset,
    balanced_sampler,
    create_multimodal_dataloader,
    rows_from_lists,
)


def _manifest(tmp_path, rows, name="m.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def media(tmp_path, wav):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    return {"image": "red.png", "broken": "broken.png", "audio": wav("a.wav", 1.5, 48000).name,
            "silent": wav("silent.wav", 1.0, 16000, 0.0).name, "low": wav("low.wav", 1.0, 2000).name}


def test_audio_is_resampled_mixed_and_cut(tmp_path, wav):
    path = wav("tone.wav", 1.5, 48000)
    full = load_audio(path, 16000)
    assert full.dtype == np.float32 and len(full) == 24000
    seg = load_audio(path, 16000, start=0.5, end=1.0)
    assert len(seg) == 8000
    # the 440 Hz tone survives resampling: the spectrum peaks there
    spectrum = np.abs(np.fft.rfft(full))
    assert abs(np.argmax(spectrum) * 16000 / len(full) - 440) < 2
    stereo = load_audio((np.stack([full, np.zeros_like(full)], 1), 16000), 16000)
    assert np.allclose(stereo, full / 2)  # channels are averaged
    assert load_audio((np.stack([full, full], 1), 16000), 8000).shape == (12000,)


def test_manifest_rows_resolve_paths_and_missing_modalities(tmp_path, media):
    path = _manifest(tmp_path, [
        {"text": "red", "image": media["image"], "label": "r"},
        {"text": None, "audio": media["audio"], "start": 0.2, "end": 0.7, "label": "a"},
        {"text": "", "image": media["image"], "audio": "", "label": "r"},
    ])
    rows = load_manifest(path)
    assert rows[0].image == tmp_path / "red.png" and rows[0].audio is None
    assert rows[1].text is None and rows[1].start == 0.2
    assert rows[2].text is None and rows[2].audio is None
    table = pa.Table.from_pylist([{"text": "x", "image": media["image"], "label": 1}])
    pq.write_table(table, tmp_path / "m.parquet")
    assert load_manifest(tmp_path / "m.parquet")[0].image == tmp_path / "red.png"


@pytest.mark.parametrize("row, message", [
    ({"label": "x"}, "row 0 has no text, image or audio"),
    ({"text": "t", "start": 1.0}, "start/end times but no audio"),
    ({"audio": "a.wav", "start": 1.0, "end": 0.5}, "end 0.5 s is not after start 1.0 s"),
])
def test_bad_rows_are_named(tmp_path, media, row, message):
    with pytest.raises(InvalidArtifactError, match=message):
        load_manifest(_manifest(tmp_path, [row]))


@pytest.mark.parametrize("row, message", [
    ({"image": "missing.png"}, r"m.jsonl row 0 \(bad\): the image .*missing.png does not exist"),
    ({"image": "broken.png"}, "broken.png cannot be read"),
    ({"audio": "silent.wav"}, "is silent"),
    ({"audio": "low.wav"}, "sampled at 2000 Hz"),
    ({"audio": "a.wav", "start": 1.0, "end": 3.0}, r"lasts 1.50 s but the row asks for 1.00-3.0 s"),
    ({"audio": "gone.wav"}, "gone.wav does not exist"),
])
def test_bad_media_fail_naming_the_row_or_are_masked(tmp_path, media, row, message):
    rows = load_manifest(_manifest(tmp_path, [{**row, "text": "kept", "id": "bad", "label": 0}]))
    with pytest.raises(InvalidArtifactError, match=message):
        MultimodalDataset(rows)[0]
    masked = MultimodalDataset(rows, on_bad_input="mask")
    item = masked[0]
    assert item["text"] == "kept" and item.get("image") is None and item.get("audio") is None
    assert sum(masked.masked.values()) == 1
    only = load_manifest(_manifest(tmp_path, [{**row, "label": 0}], "only.jsonl"))
    with pytest.raises(InvalidArtifactError, match="every modality of this row was masked"):
        MultimodalDataset(only, on_bad_input="mask")[0]


def test_lists_must_line_up():
    with pytest.raises(ConfigError, match="text 3, image 2"):
        rows_from_lists(["a", "b", "c"], ["x.png", "y.png"], None)
    rows = rows_from_lists(["a", None], [None, "y.png"], None, labels=[0, 1])
    assert rows[0].image is None and rows[1].text is None


def test_batches_carry_only_present_rows(tmp_path, media, minilm):
    model = create_multimodal_model(str(minilm), {"model_type": "vit", "image_size": 32, "patch_size": 8,
                                                  "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                  "intermediate_size": 64},
                                    {"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "intermediate_size": 64, "conv_dim": [16, 16],
                                     "conv_kernel": [10, 3], "conv_stride": [5, 2], "num_conv_pos_embeddings": 8,
                                     "num_conv_pos_embedding_groups": 2}, num_labels=2, hidden_size=32)
    loader = create_multimodal_dataloader(
        ["red", None, "a tone", "both"], [tmp_path / "red.png", None, None, Image.new("RGB", (8, 8))],
        [None, tmp_path / media["audio"], (np.ones(8000, np.float32) * 0.1, 8000), None],
        labels=["r", "a", "a", "r"], batch_size=4, shuffle=False, model=model)
    batch = next(iter(loader))
    assert batch["text"]["index"].tolist() == [0, 2, 3]
    assert batch["image"]["index"].tolist() == [0, 3] and batch["image"]["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["audio"]["index"].tolist() == [1, 2]
    # 1.5 s at 48 kHz and 1 s at 8 kHz, both at 16 kHz; the shorter is padded and masked
    assert batch["audio"]["input_values"].shape == (2, 24000)
    assert batch["audio"]["attention_mask"].sum(1).tolist() == [24000, 16000]
    assert batch["labels"].tolist() == [1, 0, 0, 1]  # sorted class names: a=0, r=1
    out = model(**batch)
    assert out.present["audio"].tolist() == [False, True, True, False]


def test_balanced_sampler_evens_out_labels_and_modality_mixes():
    rows = rows_from_lists(["t"] * 100, [None] * 90 + ["x.png"] * 10, None, labels=[0] * 80 + [1] * 20)
    dataset = MultimodalDataset(rows)
    sampler = balanced_sampler(dataset, seed=0)
    draws = [int(i) for _ in range(20) for i in sampler]
    groups = Counter((dataset.rows[i].label, dataset.presence(i)) for i in draws)
    # three groups (label 0 text only, label 1 text only, label 1 text+image): each about a third
    assert len(groups) == 3
    assert all(abs(n / len(draws) - 1 / 3) < 0.03 for n in groups.values()), groups
    plain = Counter(dataset.rows[i].label for i in torch.randperm(100).tolist())
    assert plain[0] == 80  # without balancing, 4:1


def test_media_outside_the_manifest_folder_are_refused_naming_the_row(tmp_path, media):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    inner = tmp_path / "task"
    inner.mkdir()
    (inner / "red.png").write_bytes((tmp_path / "red.png").read_bytes())
    (inner / "link.png").symlink_to(secret)
    cases = [({"image": "../secret.png"}, "the image '../secret.png' lies outside"),
             ({"image": str(secret)}, "the image .* lies outside the manifest's folder"),
             ({"image": "link.png"}, r"the image 'link.png' lies outside .* \(through a link\)"),
             ({"audio": "../" + media["audio"]}, "the audio '../a.wav' lies outside")]
    for row, message in cases:
        path = _manifest(inner, [{"text": "ok", "image": "red.png", "label": 0}, {**row, "label": 1}])
        with pytest.raises(InvalidArtifactError, match=r"m.jsonl row 1: " + message):
            load_manifest(path)
    # an explicit allow-list lets a shared media folder in; the manifest's own files are always allowed
    path = _manifest(inner, [{"image": "red.png", "label": 0}, {"image": str(secret), "label": 1}])
    assert load_manifest(path, media_roots=[tmp_path])[1].image == secret


def _png_header_claiming(path, width, height):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _wav_header_claiming(path, rate, seconds=1.0, channels=1):
    import struct

    frames = int(min(seconds * 8000, 8000))
    data = (np.sin(np.arange(frames * channels) / 5) * 8000).astype("<i2").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, channels, rate,
                         rate * 2 * channels, 2 * channels, 16, b"data", len(data))
    path.write_bytes(header + data)
    return path


def test_decompression_bombs_and_absurd_audio_headers_are_refused_before_decoding(tmp_path):
    from aptops.multimodal.data import load_image

    bomb = _png_header_claiming(tmp_path / "bomb.png", 10000, 10000)  # 100 megapixels in 100 bytes
    with pytest.raises(InvalidArtifactError, match=r"m.jsonl row 3: the image .* claims 10000x10000 pixels"):
        load_image(bomb, "m.jsonl row 3")
    huge = _png_header_claiming(tmp_path / "huge.png", 60000, 60000)  # past Pillow's own bomb limit
    with pytest.raises(InvalidArtifactError, match=r"huge.png cannot be read \(Image size"):
        load_image(huge, "m.jsonl row 3")
    fast = _wav_header_claiming(tmp_path / "fast.wav", 2**31 - 1)
    with pytest.raises(InvalidArtifactError, match=r"Hz|cannot be decoded"):
        load_audio(fast, 16000, row="m.jsonl row 4")
    # masked like any other unreadable file, not a traceback
    rows = load_manifest(_manifest(tmp_path, [{"text": "kept", "image": "bomb.png", "audio": "fast.wav", "label": 0}]))
    item = MultimodalDataset(rows, on_bad_input="mask")[0]
    assert item["text"] == "kept" and item.get("image") is None and item.get("audio") is None


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_an_encoder_folder_with_a_damaged_file_is_named_not_a_traceback(minilm, tmp_path, name):
    import shutil

    from aptops.multimodal.encoders import load_encoder

    folder = shutil.copytree(minilm, tmp_path / "encoder")
    (folder / name).write_text('{"truncated": ')
    with pytest.raises(InvalidArtifactError, match=f"{name}' is not valid JSON"):
        load_encoder("text", folder)
