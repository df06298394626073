"""The distill stage: the full loop as a ``Trainer`` subclass, the legacy per-strategy functions, and the
stage entry point that writes the student as a model artifact.

``distill_model`` goes through :func:`aptops.lm.training.run_trainer` with a
:class:`DistillationTrainer`, so checkpoints, automatic resume, LR schedules, early stopping, the plugin
bus and the debugger come with it. Validation reports the student's own loss (hence perplexity), its
top-1 agreement with the teacher and the KL divergence to the teacher.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.artifacts import StageResult
from aptops.core.config import check_choice, check_range, to_dict
from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.distill.distiller import (
    Distiller,
    StrategyConfig,
    model_inputs,
    prepare_teacher,
    run_distillation,
    teacher_forward,
)
from aptops.distill.losses import kl_divergence, prediction_positions
from aptops.distill.student import aligned_vocab, check_tokenizers, create_student
from aptops.lm import load_causal_lm, load_text_dataset
from aptops.lm.training import TrainConfig, run_trainer

log = logging.getLogger(__name__)
torch = require("torch", extra="distill", feature="distillation")
transformers = require("transformers", extra="distill", feature="distillation")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """How :func:`distill_model` trains the student.

    Attributes:
        objective: the distillation objective (:class:`~aptops.distill.distiller.StrategyConfig`): strategies and
            their weights, temperature, alpha, layer and head mappings (``--set objective.temperature=1``).
        training: how the student is trained (:class:`aptops.lm.training.TrainConfig`): block size, text column, chat
            prompt, held-out share, LoRA, early stopping, resume, the debugger, ``training_args``
            (``--set training.block_size=128``).
        student_layer_stride: when the student is made from the teacher, keep every k-th block.
        student_layers: ... or keep this many blocks, chosen by ``student_selection``; 0: use the stride.
        student_selection: how ``student_layers`` blocks are chosen: ``influence`` keeps the blocks that change
            their input most on calibration text (ShortGPT's Block Influence, measured on the teacher:
            :mod:`aptops.lm.importance`), ``spread`` keeps them evenly spread from the first to the last (24 of
            SmolLM2's 30: 0, 1, 3, 4, 5 ... 29). On SmolLM2-135M-Instruct, 24 blocks chosen by influence answer
            0.72 of the WordNet task before any training, evenly spread ones 0.41 (the teacher 0.77).
        student_intermediate_size: ... and narrow the MLP to this many channels (0: keep).
        influence_text: the text block influence is measured on: ``replay``, the general text of
            ``training.replay`` as plain text (the training text when there is no replay), or ``task``, the training
            text in its training format. On the SmolLM2-135M-Instruct ``make demo`` fine-tunes, the 24 blocks of most
            influence on news, with 20% of their MLP neurons pruned after, answer 0.73 / 0.71 of 400 WordNet /
            analogy questions (the trained model 0.81 / 0.78); the 24 of most influence on the chat-formatted
            fortunes 0.63 / 0.70 (``bench/compression_ablation.py``): a task this formulaic makes the blocks that
            write its format look influential, general text shows the ones that carry what the model knows.
        calibration_batches: batches of that text block influence is measured on.
    """

    objective: StrategyConfig = field(default_factory=StrategyConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    student_layer_stride: int = 2
    student_layers: int = 0
    student_selection: str = "influence"
    student_intermediate_size: int = 0
    influence_text: str = "replay"
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        check_range("student_layer_stride", self.student_layer_stride, min_value=1)
        if self.student_layers == 1 or self.student_layers < 0:
            raise ConfigError(f"student_layers={self.student_layers} must be 0 (use the stride) or at least 2 "
                              "(the first and the last block)", field="student_layers", value=self.student_layers)
        check_range("student_intermediate_size", self.student_intermediate_size, min_value=0)
        check_choice("student_selection", self.student_selection, ("influence", "spread"))
        check_choice("influence_text", self.influence_text, ("replay", "task"))
        check_range("calibration_batches", self.calibration_batches, min_value=1)


def spread_layers(total: int, keep: int) -> list[int]:
    """``keep`` block indices out of ``total``, evenly spread, the first and the last included.

    Raises:
        ConfigError: ``keep`` is more than the model has.
    """
    if keep > total:
        raise ConfigError(f"student_layers={keep} is more than the teacher's {total} blocks", field="student_layers",
                          value=keep)
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def calibration_batches(tokenizer: Any, dataset: Any, config: TrainConfig, batches: int) -> list[dict[str, Any]]:
    """Up to ``batches`` batches of ``dataset``'s training split as training packs it (in its chat format when it
    has one; held-out documents left out, split as :func:`aptops.lm.training.split_heldout` splits them; no replay
    text: the prune stage scores neurons on it, and on SmolLM2 neurons scored on the task's text kept more of both
    eval tasks than neurons scored on it and general news together, 0.73 / 0.71 against 0.68 / 0.70 of 400
    questions)."""
    from aptops.lm.training import split_heldout, tokenise

    splits = split_heldout(dataset, None, config)
    train_tok, _ = tokenise(dataclasses.replace(splits, eval=None), tokenizer, dataclasses.replace(config, replay=""))
    return _first_batches(train_tok, config, batches)


def replay_calibration_batches(tokenizer: Any, config: TrainConfig, batches: int) -> list[dict[str, Any]]:
    """The first ``batches`` batches of ``config.replay`` packed as training packs it (plain text blocks)."""
    from aptops.lm.training import replay_blocks

    return _first_batches(replay_blocks(tokenizer, config), config, batches)


def _first_batches(blocks: Any, config: TrainConfig, batches: int) -> list[dict[str, Any]]:
    """The first ``batches`` training batches of packed ``blocks`` (a dataset or a streamed one) as tensors."""
    batch_size = int(config.training_args.get("per_device_train_batch_size", 4))
    wanted = batches * batch_size
    streamed = isinstance(blocks, require("datasets", extra="distill", feature="calibration").IterableDataset)
    rows = list(blocks.take(wanted)) if streamed else [blocks[i] for i in range(min(wanted, len(blocks)))]
    ids = torch.tensor([r["input_ids"] for r in rows])
    return [{"input_ids": ids[i:i + batch_size]} for i in range(0, len(ids), batch_size)]


def student_blocks(teacher: Any, tokenizer: Any, dataset: Any, config: DistillConfig) -> list[int] | None:
    """The teacher blocks the student keeps: ``None`` (the stride decides), evenly spread, or the
    ``student_layers`` of greatest block influence on calibration text."""
    if not config.student_layers:
        return None
    total = teacher.config.num_hidden_layers
    if config.student_selection == "spread":
        return spread_layers(total, config.student_layers)
    from aptops.lm.importance import block_influence, most_influential_blocks

    spread_layers(total, config.student_layers)  # too many blocks asked is the same error either way
    general = config.influence_text == "replay" and bool(config.training.replay)
    batches = (replay_calibration_batches(tokenizer, config.training, config.calibration_batches) if general else
               calibration_batches(tokenizer, dataset, config.training, config.calibration_batches))
    influence = block_influence(teacher, batches, max_batches=config.calibration_batches)
    keep = most_influential_blocks(influence, config.student_layers)
    log.info("student blocks by influence on %s: keeps %s, removes %s (influence %s)",
             "the replay text" if general else "the training text", keep,
             [i for i in range(total) if i not in keep], ", ".join(f"{v:.3f}" for v in influence))
    return keep


class DistillationTrainer(transformers.Trainer):
    """A ``Trainer`` whose loss is the distillation objective against a frozen teacher."""

    def __init__(self, *args: Any, teacher: Any, objective: StrategyConfig, vocab: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = prepare_teacher(teacher, self.args.device)
        self.distiller = Distiller(objective, self.teacher, self.model, vocab=vocab).to(self.args.device)
        self._terms: dict[str, list[float]] = {}

    def create_optimizer(self, model: Any = None) -> Any:
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        extra = [p for p in self.distiller.parameters() if p.requires_grad]
        if extra:  # the feature projections learn with the student (no weight decay)
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model: Any, inputs: Mapping[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        teacher_out = teacher_forward(self.teacher, inputs, self.distiller)
        student_out = model(**model_inputs(inputs), **self.distiller.forward_kwargs())
        loss, terms = self.distiller.loss(student_out, teacher_out, inputs)
        if model.training:
            for k, v in terms.items():
                self._terms.setdefault(k, []).append(v)
        return (loss, student_out) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._terms:
            logs.update({f"distill_{k}": sum(v) / len(v) for k, v in self._terms.items()})
            self._terms = {}
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The student's own loss (for perplexity), top-1 agreement with the teacher and KL to it."""
        loader = self.get_eval_dataloader(eval_dataset)
        model = self.model
        model.eval()
        loss_sum = tokens = agree = 0.0
        kl_sum = 0.0
        vocab = self.distiller.vocab
        with torch.no_grad():
            for batch in loader:
                batch = self._prepare_inputs(batch)
                inputs = model_inputs(batch)
                s = model(**inputs).logits
                t = self.teacher(**inputs).logits
                if vocab is not None:
                    s, t = s[..., :vocab], t[..., :vocab]
                s_shift, targets, mask = prediction_positions(s, batch.get("labels"), batch.get("attention_mask"))
                t_shift = t[:, :-1, :]
                n = float(mask.sum())
                loss_sum += float(torch.nn.functional.cross_entropy(s_shift[mask].float(), targets[mask], reduction="sum"))
                agree += float((s_shift[mask].argmax(-1) == t_shift[mask].argmax(-1)).sum())
                kl_sum += float(kl_divergence(s_shift[mask], t_shift[mask]).sum())
                tokens += n
        model.train()
        if not tokens:
            raise ConfigError("the evaluation set has no token to score", field="eval_fraction")
        metrics = {f"{metric_key_prefix}_loss": loss_sum / tokens,
                   f"{metric_key_prefix}_top1_agreement": agree / tokens,
                   f"{metric_key_prefix}_teacher_kl": kl_sum / tokens,
                   f"{metric_key_prefix}_tokens": tokens}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics


def distill_model(teacher: Any, dataset: Any, *, output_dir: str | Path, config: DistillConfig | None = None,
                  student: Any = None, eval_dataset: Any = None, tokenizer: Any = None, callbacks: Iterable[Any] = (),
                  bus: Any = None) -> StageResult:
    """Train a student against a teacher with the Trainer; write the student as a model artifact.

    Args:
        teacher: a model folder, Hub id or ``PreTrainedModel``.
        dataset: the training text: anything the train stage takes (a dataset, an aptops data artifact, JSONL ...).
        output_dir: the student artifact (checkpoints inside while it runs; resumed automatically).
        config: the objective, the training settings and how a student is made.
        student: the same kinds as ``teacher``, or ``None`` to make one from the teacher (``create_student``
            with ``student_layer_stride`` and ``student_intermediate_size``).
        eval_dataset: an evaluation set (else ``training.eval_fraction`` of ``dataset`` is held out).
        tokenizer: the shared tokenizer (default: the teacher's).
        callbacks: extra ``TrainerCallback`` objects; ``bus``: a plugin bus that sees every Trainer event.

    Returns:
        The result; metrics hold the student's loss and perplexity, top-1 agreement and KL to the teacher.
    """
    cfg = config or DistillConfig()
    load_text_dataset(dataset, cfg.training.text_column)  # a bad dataset fails before models are loaded
    if cfg.training.replay:
        load_text_dataset(cfg.training.replay, cfg.training.text_column)
    teacher_lm, teacher_tok, teacher_source = load_causal_lm(teacher, tokenizer)
    objective = cfg.objective
    if student is None:
        keep = student_blocks(teacher_lm, teacher_tok, dataset, cfg)
        student_lm = create_student(teacher_lm, layer_stride=cfg.student_layer_stride, keep_layers=keep,
                                    intermediate_size=cfg.student_intermediate_size or None)
        student_tok, student_source = teacher_tok, f"create_student({teacher_source})"
        if keep is not None and not objective.layer_mappings:  # align each kept block with the one it came from
            objective = dataclasses.replace(objective, layer_mappings={j + 1: i + 1 for j, i in enumerate(keep)})
    else:
        student_lm, student_tok, student_source = load_causal_lm(
            student, None if isinstance(student, str | Path) else teacher_tok)
        check_tokenizers(teacher_tok, student_tok)
    vocab = aligned_vocab(teacher_lm, student_lm, teacher_tok)
    Distiller(objective, teacher_lm, student_lm, vocab=vocab)  # layer mappings checked before any data work
    return run_trainer(
        student_lm, teacher_tok, dataset, eval_dataset, output_dir=output_dir, config=cfg.training, bus=bus,
        callbacks=list(callbacks), stage="distill", trainer_cls=DistillationTrainer,
        trainer_kwargs={"teacher": teacher_lm, "objective": objective, "vocab": vocab},
        lineage_inputs={"teacher": teacher_source, "student": student_source}, lineage_config=to_dict(cfg))


# --- the old plugin's per-strategy functions: one pass of a plain loop with that strategy alone ---

def _legacy(teacher: Any, student: Any, loader: Iterable[Any], objective: StrategyConfig, kwargs: dict[str, Any]) -> dict[str, Any]:
    history = run_distillation(teacher, student, loader, objective, **kwargs)
    losses = history["loss"]
    history["final_loss"] = losses[-1] if losses else math.nan
    return history


def response_distillation(teacher_model: Any, student_model: Any, data_loader: Iterable[Any], temperature: float = 2.0,
                          alpha: float = 0.5, **kwargs: Any) -> dict[str, Any]:
    """Train ``student_model`` on ``data_loader`` batches with the softened-logit KL (x T²) mixed with the
    hard-label loss by ``alpha``. ``kwargs``: ``epochs``, ``learning_rate``, ``optimizer``, ``max_steps``."""
    return _legacy(teacher_model, student_model, data_loader,
                   StrategyConfig(strategies={"response": 1.0}, temperature=temperature, alpha=alpha), kwargs)


def feature_distillation(teacher_model: Any, student_model: Any, data_loader: Iterable[Any],
                         layer_mappings: Mapping[int, int] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Train the student to match mapped teacher hidden states (MSE, learned projections where widths differ)."""
    return _legacy(teacher_model, student_model, data_loader,
                   StrategyConfig(strategies={"feature": 1.0}, layer_mappings=dict(layer_mappings or {})), kwargs)


def relation_distillation(teacher_model: Any, student_model: Any, data_loader: Iterable[Any], **kwargs: Any) -> dict[str, Any]:
    """Train the student to keep the distances and angles between the samples' pooled representations."""
    return _legacy(teacher_model, student_model, data_loader, StrategyConfig(strategies={"relation": 1.0}), kwargs)


def attention_distillation(teacher_model: Any, student_model: Any, data_loader: Iterable[Any],
                           attention_type: str = "self", *, head_mapping: str = "average", **kwargs: Any) -> dict[str, Any]:
    """Train the student's attention maps towards the teacher's (KL per row; heads averaged or mapped)."""
    return _legacy(teacher_model, student_model, data_loader,
                   StrategyConfig(strategies={"attention": 1.0}, attention_type=attention_type,
                                  head_mapping=head_mapping), kwargs)
