"""Joint training of a multimodal model with the Hugging Face ``Trainer``, evaluation, inference, feature caching.

What the ``Trainer`` subclass adds to the task loss:

- **per-modality terms**: each modality alone through the shared head gets its own loss, weighted by
  ``loss_weights`` (``{"fused": 1.0, "text": 0.5, ...}``); it keeps every encoder learning when another
  modality would do the whole job, and it is what lets the model answer from one modality;
- **modality dropout**: while training, a present modality is hidden from a row with probability
  ``modality_dropout`` (never all of a row's), so the fusion learns to work with what is there;
- **gradient balancing** (``gradient_balance="ogm"``): on-the-fly gradient modulation (Peng et al., CVPR
  2022, generalised to N modalities): a modality whose own predictions are already more confident than the
  others' gets its encoder and projection gradients scaled by ``1 - tanh(alpha * (ratio - 1))`` before the
  optimizer step, so the weaker ones catch up instead of being starved;
- **a learning rate per modality** (parameter groups): ``modality_lr={"text": 1e-5}``;
- **cached features**: a frozen encoder's outputs are computed once (:func:`cache_encoder_features`); later
  epochs read them instead of decoding images / audio and running the encoder.

Checkpoints, resume, logging, the plugin bus and the debugger come from the Trainer as in the train stage.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate.utils import send_to_device
from torch.nn import functional as F

from aptops.core.errors import ConfigError
from aptops.lm import checkpoint_step, last_complete_checkpoint, training_arguments
from aptops.multimodal.data import (
    MultimodalCollator,
    MultimodalDataset,
    rows_from_lists,
)
from aptops.multimodal.model import MultimodalModel

log = logging.getLogger(__name__)

BALANCE_METHODS = ("none", "ogm")


def default_loss_weights(model: MultimodalModel) -> dict[str, float]:
    """``fused`` 1.0 and 0.5 per modality (0 for a single-modality model: its own term is the fused one)."""
    aux = 0.5 if len(model.modalities) > 1 else 0.0
    return {"fused": 1.0, **{m: aux for m in model.modalities}}


def modality_dropout(batch: Mapping[str, Any], modalities: Sequence[str], p: float,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Rows to hide per modality (bool ``(B,)``), each present modality with probability ``p``, never all of a row's."""
    b = int(batch["batch_size"])
    present = torch.zeros(len(modalities), b, dtype=torch.bool)
    for j, m in enumerate(modalities):
        if m in batch:
            present[j, batch[m]["index"].cpu()] = True
    drop = (torch.rand(len(modalities), b, generator=generator) < p) & present
    emptied = ~(present & ~drop).any(0) & present.any(0)
    if bool(emptied.any()):  # keep one present modality, chosen at random, for rows that lost them all
        scores = torch.rand(len(modalities), b, generator=generator) * present
        keep = scores.argmax(0)
        rows = emptied.nonzero().flatten()
        drop[keep[rows], rows] = False
    return {m: drop[j] for j, m in enumerate(modalities)}


class MultimodalTrainer(transformers.Trainer):
    """A ``Trainer`` for :class:`MultimodalModel` (see the module docs for the loss terms and balancing)."""

    def __init__(self, *args: Any, loss_weights: Mapping[str, float] | None = None,
                 modality_lr: Mapping[str, float] | None = None, gradient_balance: str = "ogm",
                 balance_alpha: float = 0.5, modality_dropout: float = 0.0, train_sampler: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model: MultimodalModel = self.model
        self.loss_weights = dict(default_loss_weights(model) | dict(loss_weights or {}))
        unknown = sorted(set(self.loss_weights) - {"fused", *model.modalities})
        if unknown:
            raise ConfigError(f"loss_weights has {', '.join(unknown)}; use 'fused' and the model's modalities "
                              f"({', '.join(model.modalities)})", field="loss_weights")
        self.modality_lr = dict(modality_lr or {})
        bad = sorted(set(self.modality_lr) - set(model.modalities))
        if bad:
            raise ConfigError(f"modality_lr names {', '.join(bad)}, which this model has no encoder for",
                              field="modality_lr")
        if gradient_balance not in BALANCE_METHODS:
            raise ConfigError(f"gradient_balance must be one of {', '.join(BALANCE_METHODS)}",
                              field="gradient_balance", value=gradient_balance)
        self.gradient_balance = gradient_balance
        self.balance_alpha = balance_alpha
        self.modality_dropout = modality_dropout
        self.train_sampler = train_sampler
        self._generator = torch.Generator().manual_seed(self.args.seed)
        self._terms: dict[str, list[float]] = {}
        self._scores: dict[str, list[float]] = {}
        if gradient_balance == "ogm" and model.config.task == "classification" and len(model.modalities) > 1:
            self.add_callback(_GradientModulation(self))

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
        return self.train_sampler if self.train_sampler is not None else super()._get_train_sampler(*args, **kwargs)

    def create_optimizer(self, model: Any = None) -> Any:
        """AdamW with one parameter group per modality encoder (its own learning rate) and one for the rest."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model
        base = self.args.learning_rate
        groups = []
        taken: set[int] = set()
        for m in model.modalities:
            params = [p for p in model.encoders[m].parameters() if p.requires_grad]
            taken.update(id(p) for p in params)
            if params:
                groups.append({"params": params, "lr": self.modality_lr.get(m, base), "name": f"{m}_encoder"})
        rest = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in taken]
        decay = [p for n, p in rest if p.dim() >= 2]
        no_decay = [p for n, p in rest if p.dim() < 2]
        groups.append({"params": decay, "lr": base, "weight_decay": self.args.weight_decay, "name": "fusion"})
        groups.append({"params": no_decay, "lr": base, "weight_decay": 0.0, "name": "fusion_no_decay"})
        groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=base, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                           eps=self.args.adam_epsilon, weight_decay=self.args.weight_decay)
        return self.optimizer

    def compute_loss(self, model: Any, inputs: Mapping[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inputs = dict(inputs)
        if model.training and self.modality_dropout > 0:
            inputs["drop"] = modality_dropout(inputs, self.model.modalities, self.modality_dropout, self._generator)
        labels = inputs.get("labels")
        out = model(**inputs)
        if labels is None:
            raise ConfigError("training needs labels: every manifest row needs a 'label'", field="label")
        loss, terms = objective(self.model, out, labels, self.loss_weights)
        if model.training:
            for k, v in terms.items():
                self._terms.setdefault(k, []).append(v)
            if self.gradient_balance == "ogm":
                for m, s in modality_scores(out, labels).items():
                    self._scores.setdefault(m, []).append(s)
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._terms:
            logs.update({f"multimodal_{k}": sum(v) / len(v) for k, v in self._terms.items()})
            self._terms = {}
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Loss and accuracy of the fused model and of each modality alone (see :func:`evaluate_multimodal`)."""
        loader = self.get_eval_dataloader(eval_dataset)
        metrics = evaluate_multimodal(self.model, loader, loss_weights=self.loss_weights, prefix=metric_key_prefix,
                                      device=self.args.device)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class _GradientModulation(transformers.TrainerCallback):
    """Scales each modality's encoder + projection gradients by its OGM coefficient before the step."""

    def __init__(self, trainer: MultimodalTrainer) -> None:
        self.trainer = trainer
        self.coefficients: list[dict[str, float]] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        scores = {m: sum(v) / len(v) for m, v in trainer._scores.items() if v}
        trainer._scores = {}
        coef = modulation_coefficients(scores, trainer.balance_alpha)
        model: MultimodalModel = trainer.model
        for m, c in coef.items():
            if c >= 1.0:
                continue
            for p in itertools.chain(model.encoders[m].parameters(), model.projections[m].parameters()):
                if p.grad is not None:
                    p.grad.mul_(c)
        if coef:
            self.coefficients.append(coef)
            trainer._terms.update({f"coef_{m}": [c] for m, c in coef.items()})


def modality_scores(out: Any, labels: torch.Tensor) -> dict[str, float]:
    """Each modality's mean probability of the true class on its own (rows that have it)."""
    scores = {}
    with torch.no_grad():
        for m, logits in out.modality_logits.items():
            rows = out.present[m]
            if bool(rows.any()) and logits.shape[-1] > 1:
                probs = logits[rows].float().softmax(-1)
                scores[m] = float(probs.gather(1, labels[rows].long().view(-1, 1)).mean())
    return scores


def modulation_coefficients(scores: Mapping[str, float], alpha: float) -> dict[str, float]:
    """OGM: ``1 - tanh(alpha * relu(s_m / mean(s_others) - 1))`` per modality (1.0: untouched)."""
    if len(scores) < 2:
        return {}
    coef = {}
    for m, s in scores.items():
        others = [v for o, v in scores.items() if o != m]
        ratio = s / max(sum(others) / len(others), 1e-8)
        coef[m] = 1.0 - math.tanh(alpha * max(ratio - 1.0, 0.0))
    return coef


def objective(model: MultimodalModel, out: Any, labels: torch.Tensor,
              loss_weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted training loss and its terms (``fused`` and one per modality)."""
    terms: dict[str, torch.Tensor] = {}
    if model.config.task == "embedding":
        mods = list(out.modality_logits)
        for a, b in itertools.combinations(mods, 2):
            both = out.present[a] & out.present[b]
            if int(both.sum()) > 1:
                w = 0.5 * (loss_weights.get(a, 1.0) + loss_weights.get(b, 1.0)) or 1.0
                terms[f"{a}_{b}"] = w * model.contrastive_loss(out.modality_logits[a][both],
                                                               out.modality_logits[b][both], labels[both])
        if not terms:
            raise ConfigError("embedding training needs rows with at least two modalities to pair",
                              field="task")
    else:
        terms["fused"] = loss_weights.get("fused", 1.0) * model.task_loss(out.logits, labels)
        for m, logits in out.modality_logits.items():
            w = loss_weights.get(m, 0.0)
            if w > 0 and bool(out.present[m].any()):
                terms[m] = w * model.task_loss(logits, labels, out.present[m])
    loss = torch.stack(list(terms.values())).sum()
    return loss, {k: float(v.detach()) for k, v in terms.items()}


@torch.no_grad()
def evaluate_multimodal(model: MultimodalModel, dataloader: Any, *, loss_weights: Mapping[str, float] | None = None,
                        prefix: str = "eval", device: Any = None) -> dict[str, float]:
    """Score a model on labelled batches, fused and with each modality alone.

    For classification: ``<prefix>_loss``, ``<prefix>_accuracy`` and ``<prefix>_accuracy_<modality>_only`` (the
    other modalities hidden: how well the fusion copes when only that one arrives). Regression: loss and
    ``mse``. Embedding: loss and ``<prefix>_recall@1_<a>_to_<b>`` (retrieving a row's other modality among
    the batch).
    """
    device = torch.device(device) if device is not None else model.device
    was_training = model.training
    model.eval()
    weights = dict(default_loss_weights(model) | dict(loss_weights or {}))
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}

    def add(key: str, value: float, n: float) -> None:
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0.0) + n

    try:
        for batch in dataloader:
            batch = send_to_device(batch, device)
            labels = batch.get("labels")
            if labels is None:
                raise ConfigError("evaluation needs labelled rows", field="label")
            # encoded once; fused again for each modality alone (the encoders are most of the cost)
            tokens, present = model.encode_inputs(batch.get("text"), batch.get("image"), batch.get("audio"),
                                                  labels=labels, batch_size=batch.get("batch_size"))
            out = model.fuse(tokens, present, labels=labels)
            n = float(len(labels))
            loss, _ = objective(model, out, labels, weights)
            add("loss", float(loss) * n, n)
            task = model.config.task
            if task == "classification":
                add("accuracy", float((out.logits.argmax(-1) == labels).sum()), n)
                if len(model.modalities) > 1:
                    for m in model.modalities:
                        rows = out.present[m]
                        if not bool(rows.any()):
                            continue
                        drop = {o: torch.ones_like(rows) for o in model.modalities if o != m}
                        alone = model.fuse(tokens, present, drop=drop)
                        hits = (alone.logits.argmax(-1) == labels) & rows
                        add(f"accuracy_{m}_only", float(hits.sum()), float(rows.sum()))
            elif task == "regression":
                add("mse", float(F.mse_loss(out.logits.float().view(len(labels), -1),
                                            labels.float().view(len(labels), -1), reduction="sum")), n)
            else:
                for a, b in itertools.permutations(out.modality_logits, 2):
                    both = out.present[a] & out.present[b]
                    if int(both.sum()) < 2:
                        continue
                    sim = out.modality_logits[a][both] @ out.modality_logits[b][both].T
                    lab = labels[both]
                    hit = lab[sim.argmax(1)] == lab
                    add(f"recall@1_{a}_to_{b}", float(hit.sum()), float(both.sum()))
    finally:
        model.train(was_training)
    if not counts:
        raise ConfigError("the evaluation set is empty", field="eval")
    return {f"{prefix}_{k}": sums[k] / counts[k] for k in sums}


@torch.no_grad()
def cache_encoder_features(model: MultimodalModel, dataset: MultimodalDataset, collator: MultimodalCollator,
                           modalities: Sequence[str] | None = None, batch_size: int = 32) -> dict[str, float]:
    """Run the frozen encoders over the dataset once and keep their states on it.

    Later items of ``dataset`` carry ``<modality>_features`` instead of the decoded input, the collator pads
    them and the model skips the encoder (and the image / audio decoding). Only frozen encoders are
    cached: a training encoder's output changes every step.

    Returns:
        seconds spent and megabytes held per modality.
    """
    todo = [m for m in (modalities or model.modalities) if m in model.encoders and model.encoders[m].frozen]
    if not todo:
        return {}
    was_training = model.training
    model.eval()
    stats: dict[str, float] = {}
    device = model.device
    saved = dataset.features
    dataset.features = {}
    try:
        started = time.perf_counter()
        features: dict[str, list[Any]] = {m: [None] * len(dataset) for m in todo}
        plain = MultimodalCollator(collator.processors, collator.max_text_length, modalities=todo)
        for first in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
            batch = send_to_device(plain(items), device)
            for m in todo:
                if m not in batch:
                    continue
                tokens, mask = model.encoders[m](batch[m])
                for j, i in enumerate(batch[m]["index"].tolist()):
                    real = mask[j]  # keep the real positions only (left or right padding alike)
                    features[m][first + i] = (tokens[j][real].cpu().clone(), real[real].cpu().clone())
        stats["cache_seconds"] = time.perf_counter() - started
        for m in todo:
            stats[f"cache_mb_{m}"] = sum(f[0].numel() * f[0].element_size() for f in features[m] if f) / 2**20
    except BaseException:
        dataset.features = saved
        raise
    finally:
        model.train(was_training)
    dataset.features = features
    log.info("cached frozen %s features for %d rows in %.1f s", "+".join(todo), len(dataset), stats["cache_seconds"])
    return stats


def train_multimodal(model: MultimodalModel, dataloader: torch.utils.data.DataLoader, epochs: float = 3,
                     optimizer: torch.optim.Optimizer | None = None, loss_weights: Mapping[str, float] | None = None,
                     *, eval_dataloader: Any = None, output_dir: str | Path = "multimodal-checkpoints",
                     learning_rate: float = 1e-3, modality_lr: Mapping[str, float] | None = None,
                     gradient_balance: str = "ogm", balance_alpha: float = 0.5, modality_dropout: float = 0.0,
                     cache_features: bool = False, bus: Any = None, callbacks: Sequence[Any] = (),
                     training_args: Mapping[str, Any] | None = None, resume: str | None = None,
                     seed: int = 42) -> dict[str, Any]:
    """Train ``model`` on the batches of a :func:`create_multimodal_dataloader` loader with the HF ``Trainer``.

    Args:
        model: the model (trained in place).
        dataloader: its dataset, collator, batch size and (balanced) sampler are used.
        epochs: passes over the data.
        optimizer: your own optimizer (else AdamW with a group per modality, see ``modality_lr``).
        loss_weights: ``{"fused": w, "<modality>": w}``; default fused 1.0, each modality 0.5.
        eval_dataloader: evaluated after every epoch.
        output_dir: checkpoints (one per epoch, the last two kept).
        learning_rate: the base learning rate (fusion, head, and encoders without their own).
        modality_lr: a learning rate per encoder.
        gradient_balance: ``ogm`` (classification with 2+ modalities) or ``none``.
        balance_alpha: OGM's strength.
        modality_dropout: probability of hiding a present modality from a training row.
        cache_features: precompute the frozen encoders' outputs once (see :func:`cache_encoder_features`).
        bus: a plugin bus / console core that sees every Trainer event.
        callbacks: further ``TrainerCallback`` objects.
        training_args: more ``TrainingArguments`` fields (``max_steps``, ``warmup_steps`` ...).
        resume: a checkpoint folder to continue from, or ``"auto"`` (the newest in ``output_dir``).
        seed: the seed.

    Returns:
        ``{"metrics": {...}, "history": [...], "coefficients": [...]}``.
    """
    if not isinstance(model, MultimodalModel):
        raise ConfigError("train_multimodal needs a MultimodalModel (see create_multimodal_model)", field="model")
    dataset = dataloader.dataset
    collator = dataloader.collate_fn
    if not isinstance(dataset, MultimodalDataset) or not isinstance(collator, MultimodalCollator):
        raise ConfigError("the dataloader must come from create_multimodal_dataloader", field="dataloader")
    if not 0.0 <= modality_dropout < 1.0:
        raise ConfigError("modality_dropout must be in [0, 1)", field="modality_dropout", value=modality_dropout)
    if epochs <= 0:
        raise ConfigError("epochs must be positive", field="epochs", value=epochs)
    if model.config.id2label == {} and dataset.label2id and model.config.task == "classification":
        model.config.id2label = dataset.id2label
    if model.config.task == "classification" and dataset.label2id:
        top = max(dataset.label2id.values())
        if top >= model.config.num_labels:
            raise ConfigError(f"the data has class id {top} but the model was built for {model.config.num_labels} "
                              "labels; rebuild it with num_labels = the number of classes", field="num_labels")
    stats: dict[str, float] = {}
    if cache_features:
        stats.update(cache_encoder_features(model, dataset, collator, batch_size=dataloader.batch_size or 8))
        if eval_dataloader is not None:
            cache_encoder_features(model, eval_dataloader.dataset, collator, batch_size=dataloader.batch_size or 8)
    out = Path(output_dir)
    sampler = dataloader.sampler if isinstance(dataloader.sampler, torch.utils.data.WeightedRandomSampler) else None
    batch_size = dataloader.batch_size or 8
    args = training_arguments(out, training_args, seed=seed, has_eval=eval_dataloader is not None, recipe_defaults={
        "num_train_epochs": epochs, "per_device_train_batch_size": batch_size, "per_device_eval_batch_size": batch_size,
        "learning_rate": learning_rate, "save_strategy": "epoch", "remove_unused_columns": False,
        "dataloader_num_workers": 0, "label_names": ["labels"]})
    cbs = list(callbacks)
    if bus is not None:
        from aptops.lm.callbacks import BusCallback

        cbs.append(BusCallback(bus))
    trainer = MultimodalTrainer(
        model=model, args=args, train_dataset=dataset,
        eval_dataset=eval_dataloader.dataset if eval_dataloader is not None else None,
        data_collator=collator, callbacks=cbs, optimizers=(optimizer, None), loss_weights=loss_weights,
        modality_lr=modality_lr, gradient_balance=gradient_balance, balance_alpha=balance_alpha,
        modality_dropout=modality_dropout, train_sampler=sampler)

    if resume == "auto":
        resume = last_complete_checkpoint(out)
    started = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - started
    seen = trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
    metrics = {"train_loss": float(train_out.training_loss), "global_step": float(trainer.state.global_step),
               "train_runtime_s": wall, "samples_per_second": seen / max(wall, 1e-9), **stats}
    if resume:
        metrics["resumed_from_step"] = float(checkpoint_step(resume))
    if eval_dataloader is not None:
        metrics.update(evaluate_multimodal(model, eval_dataloader, loss_weights=trainer.loss_weights,
                                           device=args.device))
    coefficients = next((c.coefficients for c in trainer.callback_handler.callbacks
                         if isinstance(c, _GradientModulation)), [])
    model.eval()
    return {"metrics": metrics, "history": list(trainer.state.log_history), "coefficients": coefficients,
            "trainer": trainer}


@torch.no_grad()
def inference_multimodal(model: MultimodalModel, text_input: Any = None, image_input: Any = None,
                         audio_input: Any = None, *, batch_size: int = 16) -> Any:
    """Predict from any subset of inputs; the fusion uses what is given.

    Each input is one item (a string; an image path, PIL image or array; an audio path or ``(array, rate)``)
    or a list of them (``None`` entries: missing for that row).

    Returns:
        For one example a dict (``label`` and ``probabilities`` for classification, ``prediction`` for
        regression, ``embedding`` always, ``modalities`` used); for lists, a list of such dicts.
    """
    single = not any(isinstance(x, list) for x in (text_input, image_input, audio_input))
    wrap = (lambda x: [x]) if single else (lambda x: x)
    rows = rows_from_lists(wrap(text_input) if text_input is not None else None,
                           wrap(image_input) if image_input is not None else None,
                           wrap(audio_input) if audio_input is not None else None)
    audio = model.processors.get("audio")
    dataset = MultimodalDataset(rows, sampling_rate=getattr(audio, "sampling_rate", 16000), task=model.config.task)
    collator = MultimodalCollator(model.processors, modalities=model.modalities)
    for m, value in (("text", text_input), ("image", image_input), ("audio", audio_input)):
        if value is not None and m not in model.modalities:
            raise ConfigError(f"this model has no {m} encoder (it has {', '.join(model.modalities)})", field=m)
    model.eval()
    results = []
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        batch = send_to_device(collator(items), model.device)
        out = model(**batch)
        for j in range(len(items)):
            used = [m for m in model.modalities if bool(out.present[m][j])]
            r: dict[str, Any] = {"modalities": used, "embedding": out.embedding[j].float().cpu().tolist()}
            if model.config.task == "classification":
                probs = out.logits[j].float().softmax(-1).cpu()
                k = int(probs.argmax())
                r.update(label_id=k, label=model.config.id2label.get(k, str(k)), probabilities=probs.tolist())
            elif model.config.task == "regression":
                r["prediction"] = out.logits[j].float().cpu().tolist()
            results.append(r)
    return results[0] if single else results
