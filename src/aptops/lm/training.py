"""The Hugging Face ``Trainer`` run as a building block: train, distill, prune and multimodal are recipes over it.

:func:`run_trainer` is made of named steps, each usable alone:

1. :func:`split_heldout` loads the data and holds out ``eval_fraction`` of it (or takes the given eval set);
2. :func:`trainer_arguments` builds the ``TrainingArguments`` (checkpoints under ``<out>/checkpoints`` or the
   cluster's checkpoint volume, the recipe's defaults, the strategy checked);
3. :func:`tokenise` packs both splits into ``block_size`` blocks (documents joined by EOS, no padding wasted);
4. :func:`training_callbacks` attaches the event bus, a watcher such as the debugger (loaded by name through
   :func:`aptops.core.bus.load_watcher`, so no stage imports it) and early stopping;
5. :func:`train_and_measure` trains (resuming from the newest whole checkpoint) and measures loss, perplexity,
   tokens/s;
6. :func:`write_model_artifact` writes the model as safetensors, ``metrics.json``, ``history.json``,
   ``report.html`` with the curves, ``aptops.json`` lineage and ``result.json`` last.

Nothing is added to the training step itself, so it costs no speed (``bench/train_overhead.py`` measures it).
Under ``torchrun`` every process trains; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aptops.core.artifacts import (
    LINEAGE_FILE,
    StageResult,
    atomic_output,
    check_output,
    finish_artifact,
    write_json,
    write_lineage,
    writing_in_place,
)
from aptops.core.bus import ConsoleCore, PluginBus, Watcher, load_watcher
from aptops.core.config import check_choice, check_range, to_dict
from aptops.core.deps import require
from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.core.logging import progress_disabled
from aptops.lm.arguments import parse_training_args, training_arguments
from aptops.lm.checkpoints import checkpoint_folder, checkpoint_step, resume_point
from aptops.lm.loading import check_model_source, load_causal_lm, load_text_dataset
from aptops.lm.packing import pack_for_clm
from aptops.lm.saving import for_inference
from aptops.lm.scoring import perplexity

log = logging.getLogger(__name__)

#: The ``TrainingArguments`` defaults of every recipe over :func:`run_trainer` (the user's ``training_args`` win).
RECIPE_DEFAULTS: dict[str, Any] = {
    "save_strategy": "steps", "save_steps": 200, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
    "include_num_input_tokens_seen": True,
    # every weight of a causal LM takes part in the loss: skip DDP's extra graph walk
    "ddp_find_unused_parameters": False,
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How :func:`run_trainer` prepares data and trains.

    Attributes:
        block_size: tokens per training sequence.
        text_column: the dataset column holding the text.
        chat_prompt: train a chat model on plain documents as answers: each document becomes the assistant
            turn after this user message, rendered with the tokenizer's chat template (empty: plain text).
            Packing raw text into an instruct model joins documents with its end-of-turn token, which
            teaches it to end every answer at once; this keeps the turns intact.
        packing: join documents (separated by EOS) and cut them into full blocks; off: one document per
            sequence, truncated and padded.
        eval_fraction: the share of documents held out for evaluation when no eval set is given (0: none).
        early_stopping_patience: stop after this many evaluations without improvement (``None``: never).
        early_stopping_threshold: the smallest eval-loss improvement that counts.
        lora_r: LoRA rank; 0 trains every weight.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: module names to adapt; empty = every linear layer.
        merge_lora: fold the adapters into the weights before saving (a plain model comes out).
        resume: ``auto`` (continue from the newest whole checkpoint in the checkpoint folder if there is one),
            ``never``, or a checkpoint folder.
        checkpoint_dir: where resumable checkpoints (weights plus optimizer state) are written while training;
            empty: under ``$APTOPS_CHECKPOINT_DIR`` when set (the cluster's checkpoint volume, which outlives a
            pod), else ``<out>/checkpoints``. They are removed once the model is written (the artifact keeps the
            model, tokenizer, card, lineage and ``history.json``), unless ``keep_checkpoints``.
        keep_checkpoints: keep the checkpoint folder after a successful run.
        strategy: how a run under torchrun spreads over its GPUs: ``ddp`` (a copy of the model on each),
            ``fsdp`` (parameters, gradients and optimizer state sharded, one unit per transformer block) or
            ``deepspeed`` (ZeRO-3); one process trains the same way with any of them.
        seed: the seed for data splits and the Trainer.
        debug: attach the training debugger (gradients, activations, memory, NaN checks); its report goes
            to ``<out>/debug/report.html`` (also JSON and PDF) and its headline numbers into the metrics.
        debug_interval: the debugger records every this many optimizer steps.
        training_args: passed to ``transformers.TrainingArguments`` as is (``learning_rate``,
            ``max_steps``, ``per_device_train_batch_size`` ...); aptops only fills in defaults.
        replay: general text mixed into the training blocks (a file, folder, data artifact or Hub dataset with
            ``text_column``, read as plain text, never in the chat format): fine-tuning, distilling or recovering
            on the task's text alone makes a model forget what it knew; replaying general text is the usual remedy
            (``bench/compression_recipes.py`` measures what it keeps). Evaluation stays on the task's held-out
            split. Empty: none.
        replay_ratio: the share of training blocks taken from ``replay``, in [0, 0.9].
    """

    block_size: int = 256
    text_column: str = "text"
    chat_prompt: str = ""
    packing: bool = True
    eval_fraction: float = 0.05
    early_stopping_patience: int | None = None
    early_stopping_threshold: float = 0.0
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ()
    merge_lora: bool = True
    resume: str = "auto"
    checkpoint_dir: str = ""
    keep_checkpoints: bool = False
    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    seed: int = 42
    debug: bool = False
    debug_interval: int = 10
    training_args: dict[str, Any] = field(default_factory=dict)
    replay: str = ""
    replay_ratio: float = 0.5

    def __post_init__(self) -> None:
        check_range("block_size", self.block_size, min_value=2)
        check_range("replay_ratio", self.replay_ratio, min_value=0.0, max_value=0.9)
        check_range("eval_fraction", self.eval_fraction, min_value=0.0, max_value=0.5)
        check_range("lora_r", self.lora_r, min_value=0)
        check_range("debug_interval", self.debug_interval, min_value=1)
        check_range("lora_dropout", self.lora_dropout, min_value=0.0, max_value=1.0)
        check_choice("strategy", self.strategy, ("ddp", "fsdp", "deepspeed"))
        if self.early_stopping_patience is not None:
            check_range("early_stopping_patience", self.early_stopping_patience, min_value=1)
        if not self.text_column.strip():
            raise ConfigError("text_column must not be empty", field="text_column", value=self.text_column)
        if not self.resume.strip():
            raise ConfigError("resume must be 'auto', 'never' or a checkpoint folder", field="resume")
        parsed = parse_training_args(self.training_args)
        object.__setattr__(self, "training_args", parsed)
        reserved = {"output_dir"} & set(parsed)
        if reserved:
            raise ConfigError("training_args.output_dir is set by aptops (<out>/checkpoints); give the output "
                              "folder as the stage's output instead", field="training_args.output_dir")


def _apply_lora(model: Any, config: TrainConfig) -> Any:
    peft = require("peft", extra="train", feature="LoRA fine-tuning")
    targets: Any = list(config.lora_target_modules) or "all-linear"
    lora = peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=targets, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, lora)


def training_report(out: Path, history: Sequence[Mapping[str, Any]], metrics: Mapping[str, float], stage: str = "train") -> Path:
    """``report.html`` of a training run: loss, gradient norm and learning-rate curves, the loss terms a Trainer
    subclass logs as ``<stage>_<term>``, and the results."""
    from aptops.core import report

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    lr = [(h["step"], h["learning_rate"]) for h in history if "learning_rate" in h and "step" in h]
    grad = [(h["step"], h["grad_norm"]) for h in history if "grad_norm" in h and "step" in h]
    sections = [
        ("Loss", report.line_chart({"train loss": train, "eval loss": evals}, title="Loss by step",
                                   x_label="optimizer step", y_label="loss")),
        ("Gradient norm", report.line_chart({"grad norm": grad}, title="Gradient L2 norm by step",
                                            x_label="optimizer step", y_label="norm", log_y=True)),
        ("Learning rate", report.line_chart({"lr": lr}, title="Learning rate schedule", x_label="optimizer step",
                                            y_label="learning rate")),
        ("Results", report.table({k: v for k, v in metrics.items()})),
    ]
    # terms a Trainer subclass logs as "<stage>_<term>" (distillation: kd, ce, feature ...) get their own chart
    terms = sorted({k for h in history for k in h if k.startswith(f"{stage}_") and isinstance(h[k], int | float)})
    if terms:
        series = {k.removeprefix(f"{stage}_"): [(h["step"], h[k]) for h in history if k in h and "step" in h]
                  for k in terms}
        sections.insert(1, (f"{stage.capitalize()} loss terms", report.line_chart(
            series, title="Loss terms by step", x_label="optimizer step", y_label="loss")))
    path = out / "report.html"
    path.write_text(report.page(f"aptops {stage}", sections), encoding="utf-8")
    return path


@dataclass
class Splits:
    """The data of one run: the training split, the held-out split (``None``: no evaluation), whether streamed."""

    train: Any
    eval: Any
    streaming: bool


def split_heldout(train: Any, eval_dataset: Any, config: TrainConfig) -> Splits:
    """Step 1: load the training data (anything :func:`aptops.lm.load_text_dataset` reads) and hold out
    ``config.eval_fraction`` of its documents for evaluation, unless an eval set is given."""
    datasets = require("datasets", extra="train", feature="training")
    train = load_text_dataset(train, config.text_column)
    streaming = isinstance(train, datasets.IterableDataset)
    if eval_dataset is not None:
        eval_dataset = load_text_dataset(eval_dataset, config.text_column)
    elif config.eval_fraction > 0 and not streaming:
        if len(train) < 2:
            raise InvalidArtifactError("the dataset has fewer than 2 documents: too few to hold any out for "
                                       "evaluation; add data or set eval_fraction=0")
        split = train.train_test_split(test_size=config.eval_fraction, seed=config.seed)
        train, eval_dataset = split["train"], split["test"]
    return Splits(train, eval_dataset, streaming)


def trainer_arguments(checkpoints: Path, config: TrainConfig, data: Splits) -> Any:
    """Step 2: the ``TrainingArguments`` of the run (built, not only parsed, so a bad value fails before a model
    loads), with the strategy and the streamed data's step count checked."""
    transformers = require("transformers", extra="train", feature="training")
    if isinstance(config.training_args, transformers.TrainingArguments):  # pragma: no cover - API convenience
        args = config.training_args
    else:
        args = training_arguments(
            checkpoints, config.training_args, seed=config.seed, has_eval=data.eval is not None,
            streaming=data.streaming, early_stopping_patience=config.early_stopping_patience,
            strategy=config.strategy, recipe_defaults=RECIPE_DEFAULTS)
    if config.strategy != "ddp" and (args.use_cpu or args.device.type != "cuda"):
        # accelerate shards only on GPUs: on a CPU it would quietly train as DDP under the strategy's name
        raise ConfigError(f"strategy={config.strategy} shards the model across GPUs and this run has none "
                          f"({args.device.type}); use strategy=ddp here, or run it on GPU nodes", field="strategy",
                          value=config.strategy)
    if data.streaming and args.max_steps < 0:
        raise ConfigError("a streamed dataset has no length: set training_args.max_steps",
                          field="training_args.max_steps")
    return args


def tokenise(data: Splits, tokenizer: Any, config: TrainConfig) -> tuple[Any, Any]:
    """Step 3: both splits packed into ``block_size`` blocks (or one document per sequence without packing);
    a split that yields no block is an error that says what to change."""
    packing = {"block_size": config.block_size, "text_column": config.text_column,
               "chat_prompt": config.chat_prompt, "packing": config.packing}
    train_tok = pack_for_clm(data.train, tokenizer, **packing)
    eval_tok = pack_for_clm(data.eval, tokenizer, **packing) if data.eval is not None else None
    if not data.streaming and len(train_tok) == 0:
        raise InvalidArtifactError(
            f"the dataset yields no training block of {config.block_size} tokens; lower block_size or add text")
    if config.replay and config.replay_ratio > 0:
        train_tok = mix_replay(train_tok, replay_blocks(tokenizer, config), config.replay_ratio, seed=config.seed)
    if eval_tok is not None and not data.streaming and len(eval_tok) == 0:
        raise InvalidArtifactError(
            f"the held-out split yields no block of {config.block_size} tokens; raise eval_fraction or lower block_size")
    return train_tok, eval_tok


def training_callbacks(config: TrainConfig, out: Path, *, bus: Any = None,
                       callbacks: Sequence[Any] = ()) -> tuple[list[Any], Watcher | None]:
    """Step 4: the Trainer callbacks of the run and its watcher: ``callbacks``, the event bus (with the ``debug``
    watcher subscribed when ``config.debug``; its report goes to ``<out>/debug``) and early stopping."""
    transformers = require("transformers", extra="train", feature="training")
    cbs: list[Any] = list(callbacks)
    bus, watcher = attach_debugger(bus, out, debug=config.debug, interval=config.debug_interval)
    if bus is not None:
        from aptops.lm.callbacks import BusCallback

        cbs.append(BusCallback(bus))
    if config.early_stopping_patience is not None:
        cbs.append(transformers.EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold))
    return cbs, watcher


def attach_debugger(bus: Any, out: Path, *, debug: bool, interval: int) -> tuple[Any, Watcher | None]:
    """With ``debug``, the ``debug`` watcher (recording every ``interval`` steps, its report in ``<out>/debug``)
    subscribed to ``bus`` (a new bus when ``None``): ``(bus, watcher)``; without, ``(bus, None)``."""
    if not debug:
        return bus, None
    watcher = load_watcher("debug", interval=interval, report_dir=out / "debug")
    bus = bus if bus is not None else PluginBus()
    (bus.bus if isinstance(bus, ConsoleCore) else bus).subscribe(watcher)
    return bus, watcher


def train_and_measure(trainer: Any, *, resume: str | None, has_eval: bool, params: tuple[int, int],
                      watcher: Watcher | None = None) -> dict[str, float]:
    """Step 5: train (from ``resume`` when given) and measure: train/eval loss, perplexity, tokens/s, step
    counts, parameters (``params``: total before any adapter, trainable) and the watcher's headline numbers."""
    metrics: dict[str, float] = {"total_params": float(params[0]), "trainable_params": float(params[1]),
                                 "world_size": float(trainer.args.world_size)}
    if trainer.args.max_steps == 0:
        # max_steps=0 asks for no optimizer step (the Trainer itself would read 0 as "use num_train_epochs"):
        # the model is measured and written as it came, e.g. a student of selected blocks, untrained
        log.info("max_steps=0: no training; the model is evaluated and written as it is")
        metrics.update({"global_step": 0.0, "train_runtime_s": 0.0})
    else:
        if resume:
            log.info("resuming from %s", resume)
        started = time.perf_counter()
        train_out = trainer.train(resume_from_checkpoint=resume)
        wall = time.perf_counter() - started
        metrics.update({"train_loss": float(train_out.training_loss), "global_step": float(trainer.state.global_step),
                        "train_runtime_s": float(train_out.metrics.get("train_runtime", wall))})
    tokens = float(trainer.state.num_input_tokens_seen or 0)
    if tokens:
        metrics["tokens_seen"] = tokens
        metrics["tokens_per_second"] = tokens / max(metrics["train_runtime_s"], 1e-9)
    if watcher is not None:
        metrics.update(watcher.summary())
    if resume:
        metrics["resumed_from_step"] = float(checkpoint_step(resume))
    if has_eval:
        ev = trainer.evaluate()
        metrics.update({k: float(v) for k, v in ev.items() if k.startswith("eval_") and isinstance(v, int | float)
                        and not k.endswith(("_runtime", "_per_second"))})
        metrics["eval_loss"] = float(ev["eval_loss"])
        metrics["perplexity"] = perplexity(metrics["eval_loss"])
    return metrics


@dataclass(frozen=True)
class Provenance:
    """What the lineage of a trained model names: the stage, its inputs and the config to record."""

    stage: str
    model_source: str
    dataset_source: str
    inputs: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] | None = None


def write_model_artifact(trainer: Any, out: Path, *, tokenizer: Any, config: TrainConfig, metrics: dict[str, float],
                         provenance: Provenance, checkpoints: Path, resume: str | None, data: Splits,
                         heldout_dir: str | Path | None = None, watcher: Watcher | None = None) -> StageResult:
    """Step 6: the trained model as an artifact (rank 0 only): safetensors (LoRA merged unless asked not to),
    tokenizer, lineage, metrics, history, report, the held-out split when asked; checkpoints removed; the result
    last. A run whose loss is not finite is refused after its files are written, so they can be looked at."""
    stage = provenance.stage
    if not trainer.is_world_process_zero():
        return StageResult(stage, outputs={"model": str(out)}, metrics=metrics)
    final = trainer.model
    if config.lora_r > 0 and config.merge_lora:
        final = final.merge_and_unload()
    for_inference(final).save_pretrained(out)  # no use_cache=False or checkpointing left from training
    tokenizer.save_pretrained(out)
    _copy_parent_lineage(provenance.model_source, out)
    write_lineage(out, stage=stage, inputs={"model": provenance.model_source, "dataset": provenance.dataset_source,
                                            **provenance.inputs},
                  config=dict(provenance.config) if provenance.config is not None else to_dict(config), metrics=metrics)
    write_json(out / "metrics.json", metrics)
    write_json(out / "history.json", trainer.state.log_history)  # the curves, without the checkpoints
    if heldout_dir is not None and data.eval is not None and not data.streaming:
        _write_heldout(data.eval, Path(heldout_dir), config.text_column, stage)
    report = training_report(out, trainer.state.log_history, metrics, stage)
    outputs = {"model": str(out), "report": str(report)}
    if watcher is not None and watcher.report:
        outputs["debug_report"] = watcher.report["html"]
    result = StageResult(stage, outputs=outputs, metrics=metrics,
                         details={"resumed_from": resume, "lora": config.lora_r > 0,
                                  "adapter_only": config.lora_r > 0 and not config.merge_lora})
    bad = [k for k in ("train_loss", "eval_loss") if k in metrics and not math.isfinite(metrics[k])]
    if bad:
        raise InvalidArtifactError(f"training diverged: {', '.join(bad)} is not finite; lower the learning "
                                   "rate or enable gradient clipping (training_args.max_grad_norm)")
    if not config.keep_checkpoints:  # optimizer state is 2-3x the model: the artifact carries the model only
        shutil.rmtree(checkpoints, ignore_errors=True)
    finish_artifact(out, result)
    return result


def replay_blocks(tokenizer: Any, config: TrainConfig) -> Any:
    """``config.replay`` packed into ``block_size`` blocks as plain text (the general text a run replays)."""
    replay = load_text_dataset(config.replay, config.text_column)
    blocks = pack_for_clm(replay, tokenizer, block_size=config.block_size, text_column=config.text_column,
                          packing=config.packing)
    if not isinstance(blocks, require("datasets", extra="train", feature="replay").IterableDataset) and not len(blocks):
        raise InvalidArtifactError(f"the replay text {config.replay!r} yields no block of {config.block_size} tokens; "
                                   "give more text or lower block_size")
    return blocks


def mix_replay(train: Any, replay: Any, ratio: float, *, seed: int = 42) -> Any:
    """``train``'s blocks with ``replay``'s mixed in, so that ``ratio`` of the blocks are replayed.

    A dataset takes ``len(train) * ratio / (1 - ratio)`` replay blocks drawn at random (all of them, logged, when
    there are fewer); the Trainer shuffles the mixture every epoch. Streamed data interleaves the two with
    those probabilities.
    """
    datasets = require("datasets", extra="train", feature="replay")
    if isinstance(train, datasets.IterableDataset) or isinstance(replay, datasets.IterableDataset):
        if not isinstance(train, datasets.IterableDataset):
            train = train.to_iterable_dataset()
        if not isinstance(replay, datasets.IterableDataset):
            replay = replay.to_iterable_dataset()
        return datasets.interleave_datasets([train, replay], probabilities=[1 - ratio, ratio], seed=seed,
                                            stopping_strategy="first_exhausted")
    wanted = round(len(train) * ratio / (1 - ratio))
    if wanted > len(replay):
        log.warning("replay: %d blocks wanted for ratio %.2f, the replay text has %d: all of them are used",
                    wanted, ratio, len(replay))
    picked = replay.shuffle(seed=seed).select(range(min(wanted, len(replay))))
    log.info("replay: %d task blocks + %d general-text blocks", len(train), len(picked))
    return datasets.concatenate_datasets([train, picked.cast(train.features)])


def run_trainer(model: Any, tokenizer: Any, train: Any, eval_dataset: Any = None, *, output_dir: str | Path,
                config: TrainConfig | None = None, stage: str = "train", trainer_cls: Any = None,
                trainer_kwargs: Mapping[str, Any] | None = None, callbacks: Sequence[Any] = (), bus: Any = None,
                heldout_dir: str | Path | None = None, dataset_source: str | None = None,
                lineage_inputs: Mapping[str, str] | None = None,
                lineage_config: Mapping[str, Any] | None = None) -> StageResult:
    """Train a causal LM with the Hugging Face ``Trainer`` and write the model artifact (the steps above).

    Args:
        model: a ``PreTrainedModel``, a local model folder or a Hub id.
        tokenizer: its tokenizer (``None`` when ``model`` is a folder: loaded from it).
        train: a ``datasets.Dataset`` / ``IterableDataset`` with a text column, or anything
            :func:`aptops.lm.load_text_dataset` takes (an aptops data artifact, JSONL, a Hub id).
        eval_dataset: an explicit evaluation set (else ``eval_fraction`` of ``train`` is held out).
        output_dir: the artifact folder: final model, checkpoints, metrics, report, lineage.
        config: how data is prepared and trained (:class:`TrainConfig`).
        stage: the stage named in the lineage and the result (``distill`` and ``prune`` train through here too).
        trainer_cls: a ``Trainer`` subclass (default ``transformers.Trainer``) and ``trainer_kwargs`` for it.
        callbacks: extra ``TrainerCallback`` objects.
        bus: a ``PluginBus`` / ``ConsoleCore`` whose subscribers see every Trainer event.
        heldout_dir: also write the evaluation documents there (a Parquet dataset artifact), so a later
            step can evaluate other models on exactly the text this run never trained on.
        dataset_source: how to name the dataset in the lineage when it is passed as an object.
        lineage_inputs: further inputs for the lineage (``{"teacher": path}``).
        lineage_config: the config recorded in the lineage (default: ``config``).

    Returns:
        The stage result; ``metrics`` holds train/eval loss, perplexity, tokens/s and step counts.
    """
    transformers = require("transformers", extra="train", feature="training")
    config = config or TrainConfig()
    if progress_disabled():
        require("datasets", extra="train", feature="training").disable_progress_bars()
    out = check_output(output_dir, kind=stage, resume=True)
    # Everything that can be checked without the model is checked first: the data, the split, the
    # TrainingArguments; a bad value fails before a model loads or a folder is made.
    check_model_source(model)
    dataset_source = dataset_source or (str(train) if isinstance(train, str | Path) else "in-memory dataset")
    data = split_heldout(train, eval_dataset, config)
    if config.replay:
        load_text_dataset(config.replay, config.text_column)  # a wrong replay source fails before the model loads
    checkpoints = checkpoint_folder(out, config.checkpoint_dir, stage=stage)
    args = trainer_arguments(checkpoints, config, data)
    model, tokenizer, model_source = load_causal_lm(model, tokenizer)
    provenance = Provenance(stage, model_source, dataset_source, dict(lineage_inputs or {}), lineage_config)
    # under torchrun rank 0 alone writes the artifact: it holds the folder (locked, marked unfinished) to the end
    with writing_in_place(out, stage=stage) if args.should_save else contextlib.nullcontext():
        with args.main_process_first(desc="tokenising"):
            train_tok, eval_tok = tokenise(data, tokenizer, config)
        total_params = sum(p.numel() for p in model.parameters())
        if config.lora_r > 0:
            model = _apply_lora(model, config)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        collator = (transformers.default_data_collator if config.packing
                    else transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False))
        cbs, watcher = training_callbacks(config, out, bus=bus, callbacks=callbacks)
        trainer = (trainer_cls or transformers.Trainer)(
            model=model, args=args, train_dataset=train_tok, eval_dataset=eval_tok, processing_class=tokenizer,
            data_collator=collator, callbacks=cbs, **dict(trainer_kwargs or {}))
        engaged = {"ddp": True, "fsdp": trainer.is_fsdp_enabled, "deepspeed": trainer.is_deepspeed_enabled}[config.strategy]
        if not engaged:
            raise ConfigError(f"strategy={config.strategy} was asked for but the Trainer did not enable it "
                              "(check training_args for settings that turn it off)", field="strategy")
        resume = resume_point(checkpoints, config.resume)
        metrics = train_and_measure(trainer, resume=resume, has_eval=eval_tok is not None,
                                    params=(total_params, trainable), watcher=watcher)
        result = write_model_artifact(trainer, out, tokenizer=tokenizer, config=config, metrics=metrics,
                                      provenance=provenance, checkpoints=checkpoints, resume=resume, data=data,
                                      heldout_dir=heldout_dir, watcher=watcher)
        if args.world_size > 1:
            trainer.accelerator.wait_for_everyone()
        return result


def _write_heldout(dataset: Any, folder: Path, text_column: str, stage: str) -> None:
    with atomic_output(folder) as tmp:
        dataset.select_columns([text_column]).to_parquet(str(tmp / "part-00000.parquet"))
        finish_artifact(tmp, StageResult(stage, outputs={"dataset": str(folder)},
                                         metrics={"rows": float(len(dataset))}, details={"role": "held-out split"}))


def _copy_parent_lineage(model_source: str, out: Path) -> None:
    target = out / LINEAGE_FILE
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    parent = Path(model_source) / LINEAGE_FILE
    if parent.is_file():
        shutil.copy2(parent, target)
