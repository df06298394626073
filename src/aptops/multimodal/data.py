"""Multimodal data: manifests, decoding (Pillow, soundfile), batching with missing modalities, balancing.

A manifest is JSONL or Parquet with one row per example::

    {"text": "a cat on a sofa", "image": "img/cat.png", "audio": "wav/meow.wav", "label": "cat",
     "start": 0.5, "end": 1.7}

``text``, ``image`` and ``audio`` are each optional per row (absent, null or empty: the modality is
missing for that row and the batch carries a mask, not an error); relative paths are read from the
manifest's folder; ``start`` / ``end`` (seconds) cut a segment out of the audio, so one long recording can
serve many rows aligned with their transcript lines. Images go through Pillow (RGB) and the encoder's image
processor; audio through soundfile (mixed to mono, resampled with ``scipy.signal.resample_poly`` to the
feature extractor's rate) and its feature extractor. Nothing here needs torchvision or torchaudio.

Bad input: a row pointing at a missing or unreadable file, a silent or implausibly sampled wav, a segment
outside its file → :class:`~aptops.core.errors.InvalidArtifactError` naming the row and the file, or with
``on_bad_input="mask"`` the modality is masked for that row and counted (``dataset.masked``).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aptops.core.deps import require
from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.multimodal.encoders import MODALITIES

log = logging.getLogger(__name__)

BAD_INPUT_POLICIES = ("error", "mask")
SILENCE_PEAK = 1e-4  # a clip whose loudest sample is below this (full scale 1.0) carries no sound
MIN_SAMPLE_RATE = 4000  # below this a "speech" wav is mislabelled or broken
MAX_SAMPLE_RATE = 768_000  # the highest rate audio interfaces record; above it a header is damaged or hostile
MAX_CHANNELS = 64
MAX_AUDIO_SAMPLES = 1 << 28  # 1 GiB of float32 decoded at once, at most (about 46 min of 48 kHz stereo)
MAX_IMAGE_PIXELS = 1 << 26  # 67 MP: above any camera's frame; encoders read 224-1024 px a side


@dataclass
class Row:
    """One manifest row, paths resolved."""

    text: str | None = None
    image: Any = None  # a path, a PIL image or an array
    audio: Any = None  # a path, or (array, sample_rate)
    label: Any = None
    start: float | None = None
    end: float | None = None
    name: str = ""


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet manifest (a folder: its ``manifest.jsonl`` / ``manifest.parquet``)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "manifest.jsonl", path / "manifest.parquet"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InvalidArtifactError(f"{path} has no manifest.jsonl or manifest.parquet", path=str(path))
        path = found
    if not path.is_file():
        raise InvalidArtifactError(f"the manifest {path} does not exist", path=str(path))
    if path.suffix == ".parquet":
        pq = require("pyarrow.parquet", extra="data", feature="Parquet manifests")
        return pq.read_table(str(path)).to_pylist()
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArtifactError(f"{path} line {n} is not JSON: {exc.msg}", path=str(path)) from None
            if not isinstance(row, dict):
                raise InvalidArtifactError(f"{path} line {n} is not a JSON object", path=str(path))
            rows.append(row)
    return rows


def load_manifest(path: str | Path, *, media_roots: Sequence[str | Path] = ()) -> list[Row]:
    """A manifest as :class:`Row` objects with paths resolved against its folder; checks the row shapes.

    Media must stay inside the manifest's folder, links followed: a row naming ``../``, an absolute path or a
    link that leaves it would let a manifest copy any readable file into a dataset that is then shared.

    Args:
        path: the manifest file, or a folder holding ``manifest.jsonl``.
        media_roots: further folders whose files rows may name (an explicit allow-list).

    Raises:
        InvalidArtifactError: no rows, a row with no modality, a bad segment, media outside the allowed folders.
    """
    path = Path(path)
    base = path if path.is_dir() else path.parent
    roots = [base.resolve(), *(Path(r).resolve() for r in media_roots)]
    raw = read_manifest(path)
    if not raw:
        raise InvalidArtifactError(f"the manifest {path} has no rows", path=str(path))
    rows = []
    for n, r in enumerate(raw):
        name = f"{path.name} row {n}" + (f" ({r['id']})" if r.get("id") else "")
        row = Row(text=None if _blank(r.get("text")) else str(r["text"]), label=r.get("label"), name=name)
        for m in ("image", "audio"):
            if not _blank(r.get(m)):
                p = Path(str(r[m]))
                full = p if p.is_absolute() else base / p
                try:
                    real = full.resolve()
                except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a link loop
                    raise InvalidArtifactError(f"{name}: the {m} {str(p)!r} is not a usable path ({exc})",
                                               path=str(path)) from None
                if not any(real == root or root in real.parents for root in roots):
                    raise InvalidArtifactError(
                        f"{name}: the {m} {str(p)!r} lies outside the manifest's folder {str(base)!r}"
                        + (" (through a link)" if not p.is_absolute() and ".." not in p.parts else "")
                        + "; copy the file inside it, or allow its folder with media_roots=[...]", path=str(path))
                setattr(row, m, full)
        for key in ("start", "end"):
            if not _blank(r.get(key)):
                try:
                    seconds = float(r[key])
                except (TypeError, ValueError):
                    raise InvalidArtifactError(f"{name}: {key}={r[key]!r} is not a number of seconds") from None
                if not math.isfinite(seconds):
                    raise InvalidArtifactError(f"{name}: {key}={r[key]!r} is not a finite number of seconds")
                setattr(row, key, seconds)
        rows.append(row)
    check_rows(rows)
    return rows


def check_rows(rows: Sequence[Row]) -> None:
    """Shape checks that need no decoding: some modality per row, sane segments."""
    for row in rows:
        if row.text is None and row.image is None and row.audio is None:
            raise InvalidArtifactError(f"{row.name} has no text, image or audio; drop it or fill one in")
        if (row.start is not None or row.end is not None) and row.audio is None:
            raise InvalidArtifactError(f"{row.name} has start/end times but no audio to cut them from")
        if row.start is not None and row.start < 0:
            raise InvalidArtifactError(f"{row.name}: start {row.start} s is negative")
        if row.start is not None and row.end is not None and row.end <= row.start:
            raise InvalidArtifactError(f"{row.name}: end {row.end} s is not after start {row.start} s")


def load_image(source: Any, row: str = "image") -> Any:
    """An RGB PIL image from a path, a PIL image or an ``(H, W[, C])`` array."""
    image_mod = require("PIL.Image", extra="multimodal", feature="images")
    if isinstance(source, image_mod.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        array = source
        if array.dtype != np.uint8:
            array = np.clip(array * (255.0 if array.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return image_mod.fromarray(array).convert("RGB")
    path = Path(source)
    if not path.is_file():
        raise InvalidArtifactError(f"{row}: the image {path} does not exist", path=str(path))
    try:
        with image_mod.open(path) as img:  # the header only: nothing is decoded yet
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidArtifactError(
                    f"{row}: the image {path} claims {width}x{height} pixels, more than {MAX_IMAGE_PIXELS:,} (a "
                    "decompression bomb or a scan far larger than any encoder reads); downscale it or drop it",
                    path=str(path))
            img.load()
            return img.convert("RGB")
    except InvalidArtifactError:
        raise
    except (OSError, SyntaxError, ValueError, image_mod.DecompressionBombError) as exc:
        raise InvalidArtifactError(f"{row}: the image {path} cannot be read ({exc}); replace or drop the file",
                                   path=str(path)) from None


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``) from ``rate`` to ``target`` Hz."""
    if rate == target:
        return wave
    signal = require("scipy.signal", extra="multimodal", feature="audio resampling")
    ratio = Fraction(target, rate).limit_denominator(1000)
    return signal.resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)


def load_audio(source: Any, target_rate: int, *, start: float | None = None, end: float | None = None,
               row: str = "audio", max_seconds: float | None = None) -> np.ndarray:
    """A mono float32 waveform at ``target_rate`` from a path (any format soundfile reads) or ``(array, rate)``.

    Raises:
        InvalidArtifactError: a missing or unreadable file, an implausible sample rate, a segment outside the
            file, or silence.
    """
    if isinstance(source, tuple):
        wave, rate = np.asarray(source[0], dtype=np.float32), int(source[1])
        label = row
    else:
        sf = require("soundfile", extra="multimodal", feature="audio")
        path = Path(source)
        label = f"{row}: the audio {path}"
        if not path.is_file():
            raise InvalidArtifactError(f"{label} does not exist", path=str(path))
        try:
            info = sf.info(str(path))
            rate = int(info.samplerate)
            # the header is untrusted: a rate or length checked before a sample is decoded (a 2^31 Hz header
            # would otherwise be resampled from gigabytes)
            if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
                raise InvalidArtifactError(f"{label} is sampled at {rate} Hz, outside {MIN_SAMPLE_RATE}-"
                                           f"{MAX_SAMPLE_RATE} Hz: not usable audio (check the file's header or how "
                                           "it was recorded)", path=str(path))
            if not 1 <= info.channels <= MAX_CHANNELS:
                raise InvalidArtifactError(f"{label} claims {info.channels} channels (at most {MAX_CHANNELS} are "
                                           "read); mix it down or drop the row", path=str(path))
            first = round((start or 0.0) * rate)
            last = round(end * rate) if end is not None else -1
            if first > info.frames or (end is not None and last > info.frames + rate // 100):
                raise InvalidArtifactError(f"{label} lasts {info.frames / rate:.2f} s but the row asks for "
                                           f"{start or 0.0:.2f}-{end if end is not None else 'end'} s",
                                           path=str(path))
            stop = info.frames if last < 0 else min(last, info.frames)
            if max_seconds is not None:  # what is cut off anyway is never decoded
                stop = min(stop, first + int(max_seconds * rate))
            if (stop - first) * info.channels > MAX_AUDIO_SAMPLES:
                raise InvalidArtifactError(f"{label} asks for {(stop - first) / rate:.0f} s of audio, more than "
                                           f"{MAX_AUDIO_SAMPLES // rate // max(info.channels, 1)} s are read at once: "
                                           "cut it into segments (start/end) or set max_audio_seconds", path=str(path))
            wave, rate = sf.read(str(path), start=first, stop=stop, dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise InvalidArtifactError(f"{label} cannot be decoded ({exc}); convert it to WAV/FLAC or drop it",
                                       path=str(path)) from None
        wave = wave.mean(axis=1)
        start = end = None
    if wave.ndim > 1:
        wave = wave.mean(axis=-1 if wave.shape[-1] <= 8 else 0)
    if rate < MIN_SAMPLE_RATE:
        raise InvalidArtifactError(f"{label} is sampled at {rate} Hz, below {MIN_SAMPLE_RATE} Hz: not usable audio "
                                   "(check the file's header or how it was recorded)")
    if rate > MAX_SAMPLE_RATE:
        raise InvalidArtifactError(f"{label} is sampled at {rate} Hz, above {MAX_SAMPLE_RATE} Hz: not usable audio "
                                   "(check the file's header or how it was recorded)")
    if start is not None or end is not None:
        wave = wave[int((start or 0.0) * rate): None if end is None else int(end * rate)]
    if wave.size == 0:
        raise InvalidArtifactError(f"{label} has no samples in the requested segment")
    if not np.isfinite(wave).all():
        raise InvalidArtifactError(f"{label} holds NaN or infinite samples")
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        raise InvalidArtifactError(f"{label} is silent (peak {peak:.1e}); drop the row or mask its audio")
    if max_seconds is not None:
        wave = wave[: int(max_seconds * rate)]
    return resample(wave, rate, target_rate)


class MultimodalDataset(torch.utils.data.Dataset):
    """Decoded examples from :class:`Row` objects: ``{"text", "image" (PIL), "audio" (array), "label", "row"}``.

    Args:
        rows: the rows (see :func:`load_manifest`).
        sampling_rate: the audio feature extractor's rate.
        label2id: class name -> id (built from the rows when omitted; numbers stay numbers).
        on_bad_input: ``error`` (raise, naming the row) or ``mask`` (drop the modality for that row).
        max_audio_seconds: cut longer audio.
        task: ``regression`` keeps labels as floats.
    """

    def __init__(self, rows: Sequence[Row], *, sampling_rate: int = 16000, label2id: Mapping[Any, int] | None = None,
                 on_bad_input: str = "error", max_audio_seconds: float | None = 10.0,
                 task: str = "classification") -> None:
        if on_bad_input not in BAD_INPUT_POLICIES:
            raise ConfigError(f"on_bad_input must be one of {', '.join(BAD_INPUT_POLICIES)}", field="on_bad_input",
                              value=on_bad_input)
        check_rows(rows)
        self.rows = list(rows)
        self.sampling_rate = sampling_rate
        self.on_bad_input = on_bad_input
        self.max_audio_seconds = max_audio_seconds
        self.task = task
        labels = [r.label for r in self.rows if r.label is not None]
        if task == "regression" or label2id is not None or not labels:
            self.label2id = dict(label2id or {})
        elif all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
            self.label2id = {x: x for x in sorted(set(labels))}
        else:
            self.label2id = {x: i for i, x in enumerate(sorted({str(x) for x in labels}))}
        self.masked: Counter[str] = Counter()
        self.features: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @property
    def id2label(self) -> dict[int, str]:
        return {i: str(x) for x, i in self.label2id.items()}

    def __len__(self) -> int:
        return len(self.rows)

    def presence(self, i: int) -> tuple[bool, bool, bool]:
        """Which modalities row ``i`` names (before decoding)."""
        r = self.rows[i]
        return r.text is not None, r.image is not None, r.audio is not None

    def label_id(self, i: int) -> Any:
        label = self.rows[i].label
        if label is None:
            return None
        if self.task == "regression":
            return float(label) if not isinstance(label, list | tuple) else [float(x) for x in label]
        key = label if label in self.label2id else str(label)
        if key not in self.label2id:
            raise InvalidArtifactError(f"{self.rows[i].name}: label {label!r} is not one of the model's classes "
                                       f"({', '.join(map(str, list(self.label2id)[:10]))})")
        return self.label2id[key]

    def _guard(self, i: int, modality: str, fn: Any) -> Any:
        try:
            return fn()
        except InvalidArtifactError:
            if self.on_bad_input == "error":
                raise
            self.masked[modality] += 1
            log.warning("%s: %s masked (on_bad_input=mask)", self.rows[i].name, modality)
            return None

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.rows[i]
        item: dict[str, Any] = {"row": i, "label": self.label_id(i), "text": r.text}
        cached = {m: feats[i] for m, feats in self.features.items()}
        for m, value in cached.items():
            item[f"{m}_features"] = value
        if r.image is not None and "image" not in cached:
            item["image"] = self._guard(i, "image", lambda: load_image(r.image, r.name))
        elif "image" not in cached:
            item["image"] = None
        if r.audio is not None and "audio" not in cached:
            item["audio"] = self._guard(i, "audio", lambda: load_audio(
                r.audio, self.sampling_rate, start=r.start, end=r.end, row=r.name, max_seconds=self.max_audio_seconds))
        elif "audio" not in cached:
            item["audio"] = None
        if "text" in cached:
            item["text"] = None
        if all(item.get(m) is None and f"{m}_features" not in item for m in MODALITIES):
            raise InvalidArtifactError(f"{r.name}: every modality of this row was masked as unreadable; drop the row")
        return item


@dataclass
class MultimodalCollator:
    """Turns decoded examples into a model batch; each modality holds only the rows that have it.

    Batch layout: ``{"text": {"input_ids", "attention_mask", "index"}, "image": {"pixel_values", "index"},
    "audio": {"input_values", "attention_mask", "index"}, "labels", "batch_size"}``; cached encoder states
    travel as ``{"features", "feature_mask", "index"}``.
    """

    processors: Mapping[str, Any]
    max_text_length: int = 128
    modalities: Sequence[str] = field(default_factory=lambda: list(MODALITIES))

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"batch_size": len(examples)}
        for m in self.modalities:
            cached = [(i, e[f"{m}_features"]) for i, e in enumerate(examples) if e.get(f"{m}_features") is not None]
            if cached:
                batch[m] = _pad_features(cached)
                continue
            rows = [(i, e[m]) for i, e in enumerate(examples) if e.get(m) is not None]
            if not rows:
                continue
            index = torch.tensor([i for i, _ in rows], dtype=torch.long)
            values = [v for _, v in rows]
            processor = self.processors.get(m)
            if processor is None:
                raise ConfigError(f"the batch has {m} but the model has no {m} processor", field=f"processors.{m}")
            if m == "text":
                enc = processor(values, padding=True, truncation=True, max_length=self.max_text_length,
                                return_tensors="pt")
                batch[m] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "index": index}
            elif m == "image":
                batch[m] = {"pixel_values": processor(images=values, return_tensors="pt")["pixel_values"],
                            "index": index}
            else:
                enc = processor(values, sampling_rate=processor.sampling_rate, padding=True,
                                return_attention_mask=True, return_tensors="pt")
                main = "input_features" if "input_features" in enc else "input_values"
                batch[m] = {main: enc[main], "index": index}
                if "attention_mask" in enc:
                    batch[m]["attention_mask"] = enc["attention_mask"]
        labels = [e.get("label") for e in examples]
        if all(x is not None for x in labels):
            batch["labels"] = torch.tensor(labels)
        elif any(x is not None for x in labels):
            raise InvalidArtifactError("some rows of the batch have a label and some do not; label every row or none")
        return batch


def _pad_features(cached: Sequence[tuple[int, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    longest = max(f.shape[0] for _, (f, _m) in cached)
    width = cached[0][1][0].shape[-1]
    feats = torch.zeros(len(cached), longest, width, dtype=cached[0][1][0].dtype)
    mask = torch.zeros(len(cached), longest, dtype=torch.bool)
    for j, (_, (f, m)) in enumerate(cached):
        feats[j, : f.shape[0]] = f
        mask[j, : f.shape[0]] = m
    return {"features": feats, "feature_mask": mask, "index": torch.tensor([i for i, _ in cached], dtype=torch.long)}


def balanced_sampler(dataset: MultimodalDataset, *, by_label: bool = True, by_modalities: bool = True,
                     seed: int = 0) -> torch.utils.data.WeightedRandomSampler:
    """A sampler that draws every (label, modalities-present) group equally often.

    Each row is weighted by one over the size of its group, so a rare class, or the few rows that have
    audio, turn up in batches as often as the common ones (sampling with replacement, one epoch = one pass
    worth of draws).
    """
    keys = []
    for i in range(len(dataset)):
        key: tuple[Any, ...] = ()
        if by_label:
            key += (dataset.rows[i].label,)
        if by_modalities:
            key += dataset.presence(i)
        keys.append(key)
    counts = Counter(keys)
    weights = torch.tensor([1.0 / counts[k] for k in keys], dtype=torch.double)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(keys), replacement=True,
                                                  generator=generator)


def rows_from_lists(text_data: Sequence[Any] | None, image_data: Sequence[Any] | None,
                    audio_data: Sequence[Any] | None, labels: Sequence[Any] | None = None) -> list[Row]:
    """Rows from parallel lists (``None`` entries: that modality is missing for that row)."""
    lists = {"text": text_data, "image": image_data, "audio": audio_data, "labels": labels}
    sizes = {k: len(v) for k, v in lists.items() if v is not None}
    if not sizes:
        raise ConfigError("give at least one of text_data, image_data, audio_data", field="data")
    if len(set(sizes.values())) > 1:
        raise ConfigError("the modality lists have different lengths: "
                          + ", ".join(f"{k} {n}" for k, n in sizes.items())
                          + "; pad a missing entry with None so row i means the same example everywhere",
                          field="data")
    n = next(iter(sizes.values()))
    rows = []
    for i in range(n):
        pick = {k: (v[i] if v is not None else None) for k, v in lists.items()}
        rows.append(Row(text=None if _blank(pick["text"]) else str(pick["text"]), image=pick["image"],
                        audio=pick["audio"], label=pick["labels"], name=f"example {i}"))
    return rows


def create_multimodal_dataloader(text_data: Sequence[Any] | None = None, image_data: Sequence[Any] | None = None,
                                 audio_data: Sequence[Any] | None = None, batch_size: int = 8, shuffle: bool = True,
                                 *, labels: Sequence[Any] | None = None, manifest: str | Path | None = None,
                                 model: Any = None, processors: Mapping[str, Any] | None = None,
                                 balance: bool = False, on_bad_input: str = "error",
                                 max_text_length: int = 128, max_audio_seconds: float | None = 10.0,
                                 label2id: Mapping[Any, int] | None = None, num_workers: int = 0,
                                 seed: int = 0) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` of model batches from parallel lists or a manifest.

    Args:
        text_data / image_data / audio_data: parallel lists (strings; image paths, PIL images or arrays;
            audio paths or ``(array, rate)``), ``None`` entries for missing modalities.
        batch_size: rows per batch.
        shuffle: shuffle every epoch (ignored when ``balance`` draws the rows).
        labels: one label per row.
        manifest: a JSONL / Parquet manifest instead of the lists.
        model: a :class:`MultimodalModel` whose processors (and classes) to use.
        processors: processors per modality when no model is given.
        balance: draw rows so labels and modality combinations are equally represented.
        on_bad_input: ``error`` or ``mask`` (see the module docs).
        max_text_length: tokens per text.
        max_audio_seconds: longer audio is cut.
        label2id: class name -> id (default: the model's classes, else sorted names).
        num_workers: decoding worker processes.
        seed: the balancing sampler's seed.
    """
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1", field="batch_size", value=batch_size)
    rows = load_manifest(manifest) if manifest is not None else rows_from_lists(text_data, image_data, audio_data,
                                                                                labels)
    procs = dict(processors or (model.processors if model is not None else {}))
    if label2id is None and model is not None and model.config.id2label:
        label2id = {v: k for k, v in model.config.id2label.items()}
    audio = procs.get("audio")
    dataset = MultimodalDataset(rows, sampling_rate=getattr(audio, "sampling_rate", 16000), label2id=label2id,
                                on_bad_input=on_bad_input, max_audio_seconds=max_audio_seconds,
                                task=model.config.task if model is not None else "classification")
    collator = MultimodalCollator(procs, max_text_length=max_text_length,
                                  modalities=model.modalities if model is not None else list(MODALITIES))
    sampler = balanced_sampler(dataset, seed=seed) if balance else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                                       sampler=sampler, collate_fn=collator, num_workers=num_workers)
