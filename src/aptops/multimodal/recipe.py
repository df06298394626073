"""The multimodal stage: a manifest in, a trained model folder with metrics and a report out.

Try it on a CPU with the sample task (photos + spoken recordings + captions, see
:mod:`aptops.multimodal.samples`)::

    aptops multimodal sample runs/mm-data
    aptops multimodal train runs/mm-data/train.jsonl --eval runs/mm-data/eval.jsonl --out runs/mm \\
        --set text_encoder=$(python -c "from aptops.core.assets import minilm_folder; print(minilm_folder())") \\
        --set freeze=[text] --set epochs=12
    aptops multimodal predict runs/mm --text "a cup of coffee" --image runs/mm-data/images/eval-cat-000.png

Also :func:`prepare_multimodal_data`: checks a manifest (every file decodes, segments fit) and copies it
with its files into one self-contained folder, the form the pipeline passes between steps.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.artifacts import (
    StageResult,
    atomic_output,
    check_output,
    finish_artifact,
    write_json,
    write_lineage,
    writing_in_place,
)
from aptops.core.config import check_choice, check_range, to_dict
from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.lm.arguments import parse_training_args
from aptops.lm.checkpoints import checkpoint_folder
from aptops.lm.training import attach_debugger
from aptops.multimodal.data import (
    BAD_INPUT_POLICIES,
    MultimodalCollator,
    MultimodalDataset,
    Row,
    balanced_sampler,
    load_manifest,
)
from aptops.multimodal.encoders import MODALITIES
from aptops.multimodal.model import FUSIONS, TASKS, create_multimodal_model

log = logging.getLogger(__name__)

TINY_ENCODERS: dict[str, dict[str, Any]] = {
    # random-weight encoders small enough to train on a CPU in seconds (the sample task, tests)
    "image": {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 128},
    "audio": {"model_type": "wav2vec2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128, "conv_dim": [32, 32, 32, 32], "conv_kernel": [10, 5, 3, 3],
              "conv_stride": [5, 4, 4, 4], "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
              "do_stable_layer_norm": True, "feat_extract_norm": "layer"},
}


@dataclass(frozen=True, kw_only=True)
class MultimodalConfig:
    """How :func:`train_multimodal_model` builds and trains.

    Attributes:
        modalities: the modalities to use (default: every one the manifest has).
        text_encoder / image_encoder / audio_encoder: a model folder or Hub id, a mapping with ``model_type``
            (random weights), ``tiny`` (a small random ViT / Wav2Vec2 for CPU runs) or empty (modality unused;
            by default each modality found in the manifest gets ``tiny`` for image / audio and needs a text
            encoder to be named).
        fusion: ``concat``, ``add`` or ``attention``.
        task: ``classification``, ``regression`` or ``embedding``.
        hidden_size / num_heads / dropout: the fusion's width, attention heads and dropout.
        freeze: encoders that stay fixed.
        cache_features: compute frozen encoders' outputs once instead of every epoch.
        epochs / batch_size / learning_rate: the training loop.
        modality_lr: a learning rate per encoder (``text: 1e-5``).
        loss_weights: ``fused`` and per-modality loss weights.
        modality_dropout: chance of hiding a present modality from a training row.
        gradient_balance: ``ogm`` or ``none``.
        balance_alpha: OGM's strength.
        balance_batches: draw rows so every (label, modalities present) group is equally represented.
        on_bad_input: ``error`` or ``mask`` for unreadable / missing files and silent audio.
        media_roots: folders beyond the manifest's own whose files its rows may name (none by default: a
            row naming a file outside the manifest's folder is refused).
        eval_fraction: held out of the training manifest when no eval manifest is given.
        max_text_length / max_audio_seconds: input limits.
        seed: the seed.
        debug: attach the training debugger (gradients per encoder, activations, memory, NaN checks); its report
            goes to ``<out>/debug/report.html``.
        debug_interval: the debugger records every this many optimizer steps.
        training_args: further ``transformers.TrainingArguments`` fields.
    """

    modalities: tuple[str, ...] = ()
    text_encoder: Any = None
    image_encoder: Any = None
    audio_encoder: Any = None
    fusion: str = "concat"
    task: str = "classification"
    hidden_size: int = 128
    num_heads: int = 4
    dropout: float = 0.1
    freeze: tuple[str, ...] = ()
    cache_features: bool = True
    epochs: float = 10.0
    batch_size: int = 16
    learning_rate: float = 2e-3
    modality_lr: dict[str, float] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    modality_dropout: float = 0.3
    gradient_balance: str = "ogm"
    balance_alpha: float = 0.5
    balance_batches: bool = True
    on_bad_input: str = "error"
    media_roots: tuple[str, ...] = ()
    eval_fraction: float = 0.2
    max_text_length: int = 64
    max_audio_seconds: float = 10.0
    seed: int = 42
    debug: bool = False
    debug_interval: int = 10
    training_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_range("debug_interval", self.debug_interval, min_value=1)
        check_choice("fusion", self.fusion, FUSIONS)
        check_choice("task", self.task, TASKS)
        check_choice("gradient_balance", self.gradient_balance, ("ogm", "none"))
        check_choice("on_bad_input", self.on_bad_input, BAD_INPUT_POLICIES)
        check_range("hidden_size", self.hidden_size, min_value=2)
        check_range("epochs", self.epochs, min_value=1e-6)
        check_range("batch_size", self.batch_size, min_value=1)
        check_range("learning_rate", self.learning_rate, min_value=0.0)
        check_range("modality_dropout", self.modality_dropout, min_value=0.0, max_value=0.95)
        check_range("eval_fraction", self.eval_fraction, min_value=0.0, max_value=0.5)
        object.__setattr__(self, "training_args", parse_training_args(self.training_args))
        bad = sorted((set(self.freeze) | set(self.modalities)) - set(MODALITIES))
        if bad:
            raise ConfigError(f"freeze / modalities name {', '.join(bad)}; use text, image, audio", field="freeze")
        for name in ("modality_lr", "loss_weights"):
            values = {k: float(v) for k, v in dict(getattr(self, name)).items()}
            if any(v < 0 for v in values.values()):
                raise ConfigError(f"{name} values must not be negative", field=name)
            object.__setattr__(self, name, values)


def _present(rows: Sequence[Row]) -> set[str]:
    return {m for m in MODALITIES for r in rows if getattr(r, m) is not None}


def _encoder_specs(config: MultimodalConfig, present: set[str]) -> dict[str, Any]:
    specs = {}
    for m in MODALITIES:
        spec = getattr(config, f"{m}_encoder")
        if isinstance(spec, str) and not spec.strip():
            spec = None
        if spec is None and m in present and m in TINY_ENCODERS:
            spec = "tiny"
        if spec is None:
            continue
        if spec == "tiny":
            if m not in TINY_ENCODERS:
                raise ConfigError("there is no tiny text encoder (a tokenizer is needed): give a text model folder "
                                  "or Hub id", field="text_encoder")
            spec = dict(TINY_ENCODERS[m])
        specs[m] = spec
    if "text" in present and "text" not in specs:
        raise ConfigError("the manifest has text but no text_encoder is set: give a model folder or Hub id "
                          "(for example the all-MiniLM-L6-v2 folder, aptops.core.assets.minilm_folder()), or leave "
                          "text out with modalities=[image,audio]",
                          field="text_encoder")
    unused = sorted(present - set(specs))
    if unused:
        log.warning("the manifest has %s but no encoder is set for it: ignored", ", ".join(unused))
    if not specs:
        raise ConfigError("no encoder: the manifest has no modality an encoder is set for", field="encoders")
    return specs


def _split(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Hold out ``fraction`` of each label's rows (at least one per label with two or more rows)."""
    by_label: dict[Any, list[Row]] = {}
    for r in rows:
        by_label.setdefault(r.label, []).append(r)
    rng = random.Random(seed)
    train, held = [], []
    for group in by_label.values():
        rng.shuffle(group)
        k = max(1, round(len(group) * fraction)) if len(group) > 1 else 0
        held += group[:k]
        train += group[k:]
    return train, held


def load_rows(train: str | Path, eval_data: str | Path | None, config: MultimodalConfig) -> tuple[list[Row], list[Row], set[str]]:
    """Step 1: the training and evaluation rows (``eval_fraction`` per label held out when no evaluation manifest is
    given), every training row labelled, only the modalities in use kept: ``(rows, eval_rows, modalities)``."""
    rows = load_manifest(train, media_roots=config.media_roots)
    if eval_data is not None:
        eval_rows = load_manifest(eval_data, media_roots=config.media_roots)
    elif config.eval_fraction > 0:
        rows, eval_rows = _split(rows, config.eval_fraction, config.seed)
    else:
        eval_rows = []
    if config.task != "regression" and any(r.label is None for r in rows):
        missing = next(r.name for r in rows if r.label is None)
        raise InvalidArtifactError(f"{missing} has no label; every training row needs one")
    present = _present(rows) & set(config.modalities or MODALITIES)
    if not present:
        raise InvalidArtifactError(f"the manifest has none of the modalities asked for ({', '.join(config.modalities)})")
    if config.modalities:  # the rows keep only the modalities in use
        for r in [*rows, *eval_rows]:
            for m in set(MODALITIES) - present:
                setattr(r, m, None)
            if r.audio is None:
                r.start = r.end = None
        rows = [r for r in rows if r.text is not None or r.image is not None or r.audio is not None]
        eval_rows = [r for r in eval_rows if r.text is not None or r.image is not None or r.audio is not None]
    return rows, eval_rows, present


def class_labels(rows: list[Row], eval_rows: list[Row], config: MultimodalConfig) -> list[str]:
    """Step 2: the class names of a classification task, sorted (none for regression or embeddings); every
    evaluation label must be one of them."""
    labels = sorted({str(r.label) for r in rows}) if config.task == "classification" else []
    if config.task == "classification" and len(labels) < 2:
        raise InvalidArtifactError(f"the training manifest has {len(labels)} class(es); classification needs two or more")
    unknown = sorted({str(r.label) for r in eval_rows} - set(labels)) if labels else []
    if unknown:
        raise InvalidArtifactError(f"the evaluation rows have labels the training rows lack: {', '.join(unknown[:5])}")
    return labels


def data_loaders(model: Any, rows: list[Row], eval_rows: list[Row], labels: list[str],
                 config: MultimodalConfig) -> tuple[MultimodalDataset, Any, Any]:
    """Step 3: the training dataset and its loader (class-balanced batches when asked) and the evaluation loader
    (``None`` without evaluation rows)."""
    import torch

    audio = model.processors.get("audio")
    label2id = {x: i for i, x in enumerate(labels)}

    def dataset(part: list[Row]) -> MultimodalDataset:
        # rows keep their label names: the dataset maps them through label2id
        return MultimodalDataset(part, sampling_rate=getattr(audio, "sampling_rate", 16000),
                                 label2id=label2id if labels else None, on_bad_input=config.on_bad_input,
                                 max_audio_seconds=config.max_audio_seconds, task=config.task)

    collator = MultimodalCollator(model.processors, max_text_length=config.max_text_length,
                                  modalities=model.modalities)
    train_ds = dataset(rows)
    sampler = balanced_sampler(train_ds, seed=config.seed) if config.balance_batches else None
    loader = torch.utils.data.DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler,
                                         shuffle=sampler is None, collate_fn=collator)
    eval_loader = (torch.utils.data.DataLoader(dataset(eval_rows), batch_size=config.batch_size, shuffle=False,
                                               collate_fn=collator) if eval_rows else None)
    return train_ds, loader, eval_loader


def _run_metrics(run: Mapping[str, Any], model: Any, rows: list[Row], eval_rows: list[Row],
                 train_ds: MultimodalDataset, labels: list[str], debugger: Any) -> dict[str, float]:
    metrics = dict(run["metrics"])
    metrics.update({
        "total_params": float(sum(p.numel() for p in model.parameters())),
        "trainable_params": float(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "train_rows": float(len(rows)), "eval_rows": float(len(eval_rows)),
        "masked_inputs": float(sum(train_ds.masked.values())),
    })
    if labels:
        metrics["chance_accuracy"] = 1.0 / len(labels)
    if debugger is not None:
        metrics.update(debugger.summary())
    for m in model.modalities:
        metrics[f"train_rows_with_{m}"] = float(sum(getattr(r, m) is not None for r in rows))
    return metrics


def train_multimodal_model(train: str | Path, *, output_dir: str | Path, config: MultimodalConfig | None = None,
                           eval_data: str | Path | None = None, bus: Any = None) -> StageResult:
    """Train a multimodal model on a manifest and write the model artifact: rows (:func:`load_rows`), labels
    (:func:`class_labels`), the model, loaders (:func:`data_loaders`), training, the artifact.

    Args:
        train: a JSONL / Parquet manifest (or a folder holding ``manifest.jsonl``).
        output_dir: the model folder (encoders, fusion and head, ``metrics.json``, ``report.html``,
            checkpoints, ``result.json`` last).
        config: the settings.
        eval_data: an evaluation manifest (else ``eval_fraction`` of ``train`` per label is held out).
        bus: a plugin bus whose plugins see every Trainer event.

    Returns:
        The stage result; metrics hold eval accuracy fused and per modality alone, samples/s, losses.
    """
    from aptops.multimodal.training import train_multimodal

    config = config or MultimodalConfig()
    out = check_output(output_dir, kind="multimodal", resume=True)
    rows, eval_rows, present = load_rows(train, eval_data, config)
    specs = _encoder_specs(config, present)
    labels = class_labels(rows, eval_rows, config)
    freeze = tuple(m for m in config.freeze if m in specs)
    model = create_multimodal_model(specs.get("text"), specs.get("image"), specs.get("audio"), config.fusion,
                                    task=config.task, num_labels=max(len(labels), 1), hidden_size=config.hidden_size,
                                    num_heads=config.num_heads, dropout=config.dropout, freeze=freeze,
                                    id2label=dict(enumerate(labels)))
    train_ds, loader, eval_loader = data_loaders(model, rows, eval_rows, labels, config)

    with writing_in_place(out, stage="multimodal"):  # locked and marked unfinished until result.json
        bus, debugger = attach_debugger(bus, out, debug=config.debug, interval=config.debug_interval)
        checkpoints = checkpoint_folder(out, stage="multimodal")  # on the cluster's checkpoint volume when it has one
        run = train_multimodal(model, loader, config.epochs, loss_weights=config.loss_weights or None,
                               eval_dataloader=eval_loader, output_dir=checkpoints,
                               learning_rate=config.learning_rate, modality_lr=config.modality_lr,
                               gradient_balance=config.gradient_balance, balance_alpha=config.balance_alpha,
                               modality_dropout=config.modality_dropout, cache_features=config.cache_features, bus=bus,
                               training_args={"logging_steps": 5} | dict(config.training_args), resume="auto",
                               seed=config.seed)
        metrics = _run_metrics(run, model, rows, eval_rows, train_ds, labels, debugger)
        model.save_pretrained(out)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the final model is the folder itself
        write_json(out / "metrics.json", metrics)
        report = _report(out, run["history"], run["coefficients"], metrics, model.modalities)
        write_lineage(out, stage="multimodal", inputs={"train": str(train), "eval": str(eval_data or "held out"),
                                                       **{f"{m}_encoder": json.dumps(s) if isinstance(s, dict) else str(s)
                                                          for m, s in specs.items()}},
                      config=to_dict(config), metrics=metrics)
        outputs = {"model": str(out), "report": str(report)}
        if debugger is not None and debugger.report:
            outputs["debug_report"] = debugger.report["html"]
        return finish_artifact(out, StageResult("multimodal", outputs=outputs, metrics=metrics,
                                                details={"modalities": model.modalities, "fusion": config.fusion,
                                                         "labels": labels, "frozen": list(freeze)}))


def _report(out: Path, history: Sequence[Mapping[str, Any]], coefficients: Sequence[Mapping[str, float]],
            metrics: Mapping[str, float], modalities: Sequence[str]) -> Path:
    from aptops.core import report

    def series(key: str) -> list[tuple[float, float]]:
        return [(h["step"], h[key]) for h in history if key in h and "step" in h]

    terms = sorted({k for h in history for k in h if k.startswith("multimodal_") and not k.startswith("multimodal_coef")})
    sections = [
        ("Loss", report.line_chart({"train loss": series("loss"), "eval loss": series("eval_loss")},
                                   title="Loss by step", x_label="optimizer step", y_label="loss")),
        ("Loss terms", report.line_chart({k.removeprefix("multimodal_"): series(k) for k in terms},
                                         title="Fused and per-modality loss terms (weighted)",
                                         x_label="optimizer step", y_label="loss")),
    ]
    accuracy = {"fused": series("eval_accuracy"),
                **{f"{m} only": series(f"eval_accuracy_{m}_only") for m in modalities}}
    if any(accuracy.values()):
        sections.append(("Accuracy", report.line_chart(
            {k: v for k, v in accuracy.items() if v}, title="Held-out accuracy by step: fused and each modality alone",
            x_label="optimizer step", y_label="accuracy")))
    if coefficients:
        sections.append(("Gradient balancing", report.line_chart(
            {m: [(i + 1, c[m]) for i, c in enumerate(coefficients) if m in c] for m in modalities},
            title="OGM coefficient per modality (1 = untouched; lower = the dominant modality slowed down)",
            x_label="optimizer step", y_label="gradient scale")))
    sections.append(("Results", report.table({k: v for k, v in metrics.items()})))
    path = out / "report.html"
    path.write_text(report.page("aptops multimodal", sections), encoding="utf-8")
    return path


def prepare_multimodal_data(manifest: str | Path, output_dir: str | Path, *, on_bad_input: str = "error",
                            sampling_rate: int = 16000, media_roots: Sequence[str | Path] = ()) -> StageResult:
    """Check a manifest's rows (every image and audio segment decodes) and copy it into one self-contained folder.

    The output holds ``manifest.jsonl`` (paths relative to it) and the files under ``files/``; rows whose
    media fail are errors, or with ``on_bad_input="mask"`` keep their other modalities (a row left with
    none is dropped). Media outside the manifest's folder (or ``media_roots``) are refused, never copied.
    Metrics count rows, modalities and labels.
    """
    from aptops.multimodal.data import load_audio, load_image

    check_choice("on_bad_input", on_bad_input, BAD_INPUT_POLICIES)
    rows = load_manifest(manifest, media_roots=media_roots)
    out = Path(output_dir)
    counts: Counter[str] = Counter()
    with atomic_output(out) as tmp:
        files = tmp / "files"
        files.mkdir()
        copied: dict[Path, str] = {}
        written = []
        for r in rows:
            entry: dict[str, Any] = {"text": r.text, "label": r.label, "start": r.start, "end": r.end}
            for m, check in (("image", lambda r: load_image(r.image, r.name)),
                             ("audio", lambda r: load_audio(r.audio, sampling_rate, start=r.start, end=r.end,
                                                            row=r.name))):
                source = getattr(r, m)
                if source is None:
                    continue
                try:
                    check(r)
                except InvalidArtifactError:
                    if on_bad_input == "error":
                        raise
                    counts[f"masked_{m}"] += 1
                    log.warning("%s: %s masked", r.name, m)
                    continue
                source = Path(source)
                if source not in copied:
                    name = f"files/{len(copied):06d}-{source.name}"
                    shutil.copyfile(source, tmp / name)
                    copied[source] = name
                entry[m] = copied[source]
            if "audio" not in entry:  # a segment without its audio means nothing
                entry["start"] = entry["end"] = None
            if entry["text"] is None and "image" not in entry and "audio" not in entry:
                counts["dropped_rows"] += 1
                continue
            for m in MODALITIES:
                counts[f"rows_with_{m}"] += entry.get(m) is not None
            written.append({k: v for k, v in entry.items() if v is not None})
        if not written:
            raise InvalidArtifactError(f"no usable row is left in {manifest}")
        with (tmp / "manifest.jsonl").open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(w, ensure_ascii=False) + "\n" for w in written)
        labels = Counter(str(w.get("label")) for w in written if "label" in w)
        metrics = {"rows": float(len(written)), "labels": float(len(labels)), "files": float(len(copied)),
                   **{k: float(v) for k, v in counts.items()}}
        result = finish_artifact(tmp, StageResult("multimodal", outputs={"dataset": str(out)}, metrics=metrics,
                                                  details={"source": str(manifest), "label_counts": dict(labels)}))
    return result
