"""Causal-LM fine-tuning with the Hugging Face ``Trainer``, as a stage.

Try it on a CPU with the tiny SmolLM2 copy the demo builds (or any causal LM folder)::

    aptops train run runs/smollm2 runs/clean --out runs/train \\
        --set block_size=128 --set training_args.max_steps=20

What the wrapper adds to a plain ``Trainer`` (and nothing in the training step itself, so it costs no speed;
``bench/train_overhead.py`` measures it): tokenisation with packing into ``block_size`` blocks (documents
joined by EOS, no padding wasted), a held-out split and perplexity, checkpoints (under ``<out>/checkpoints``
or a volume that outlives the pod) with automatic resume after a crash, removed once the model is written, early stopping, optional LoRA (peft), tokens/s,
the plugin bus attached as a ``TrainerCallback`` (the debug stage watches through it), and an artifact:
the final model as safetensors, ``metrics.json``, ``report.html`` with the loss curves, ``aptops.json``
lineage and ``result.json`` written last. Under ``torchrun`` every process trains; only rank 0 writes.
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
    check_output,
    finish_artifact,
    write_json,
    write_lineage,
    writing_in_place,
)
from aptops.core.config import check_choice, check_range, to_dict
from aptops.core.deps import require
from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.core.logging import progress_disabled
from aptops.lm import (
    EvalConfig,
    check_model_source,
    checkpoint_folder,
    checkpoint_step,
    evaluate_perplexity,
    load_causal_lm,
    load_text_dataset,
    pack_for_clm,
    parse_training_args,
    perplexity,
    resume_point,
    training_arguments,
)
from aptops.lm.saving import for_inference

log = logging.getLogger(__name__)

@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How :func:`train_with_hf_trainer` prepares data and trains.

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

    def __post_init__(self) -> None:
        check_range("block_size", self.block_size, min_value=2)
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


def _report(out: Path, history: Sequence[Mapping[str, Any]], metrics: Mapping[str, float], stage: str = "train") -> Path:
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


def train_with_hf_trainer(model: Any, tokenizer: Any, dataset: Any, output_dir: str | Path,
                          training_args: Mapping[str, Any] | TrainConfig | None = None, *,
                          eval_dataset: Any = None, bus: Any = None, callbacks: Sequence[Any] = (),
                          dataset_source: str | None = None, heldout_dir: str | Path | None = None,
                          stage: str = "train", trainer_cls: Any = None, trainer_kwargs: Mapping[str, Any] | None = None,
                          lineage_inputs: Mapping[str, str] | None = None,
                          lineage_config: Mapping[str, Any] | None = None) -> StageResult:
    """Fine-tune a causal LM with the Hugging Face ``Trainer`` and write the model artifact.

    Args:
        model: a ``PreTrainedModel``, a local model folder or a Hub id.
        tokenizer: its tokenizer (``None`` when ``model`` is a folder: loaded from it).
        dataset: a ``datasets.Dataset`` / ``IterableDataset`` with a text column, or anything
            :func:`aptops.hub.load_hf_dataset` takes (an aptops data artifact, JSONL, a Hub id).
        output_dir: the artifact folder: final model, checkpoints, metrics, report, lineage.
        training_args: a :class:`TrainConfig`, or a mapping of ``TrainingArguments`` fields (shorthand
            for ``TrainConfig(training_args=...)``).
        eval_dataset: an explicit evaluation set (else ``eval_fraction`` of ``dataset`` is held out).
        bus: a ``PluginBus`` / ``ConsoleCore`` whose plugins see every Trainer event.
        callbacks: extra ``TrainerCallback`` objects.
        dataset_source: how to name the dataset in the lineage when it is passed as an object.
        heldout_dir: also write the evaluation documents there (a Parquet dataset artifact), so a later
            step can evaluate other models on exactly the text this run never trained on.
        stage: the stage named in the lineage and the result (``distill`` trains through here too).
        trainer_cls: a ``Trainer`` subclass (default ``transformers.Trainer``) and ``trainer_kwargs`` for it.
        lineage_inputs: further inputs for the lineage (``{"teacher": path}``).
        lineage_config: the config recorded in the lineage (default: ``config``).

    Returns:
        The stage result; ``metrics`` holds train/eval loss, perplexity, tokens/s and step counts.
    """
    transformers = require("transformers", extra="train", feature="training")
    datasets = require("datasets", extra="train", feature="training")
    config = training_args if isinstance(training_args, TrainConfig) else TrainConfig(
        training_args=dict(training_args or {}))
    if progress_disabled():
        datasets.disable_progress_bars()
    out = check_output(output_dir, kind=stage, resume=True)
    # Everything that can be checked without the model is checked first: the data, the split, the
    # TrainingArguments (built, not only parsed); a bad value fails before a model loads or a folder is made.
    check_model_source(model)
    ds_source = dataset_source or (str(dataset) if isinstance(dataset, str | Path) else "in-memory dataset")
    dataset = load_text_dataset(dataset, config.text_column)
    streaming = isinstance(dataset, datasets.IterableDataset)
    if eval_dataset is not None:
        eval_dataset = load_text_dataset(eval_dataset, config.text_column)
    elif config.eval_fraction > 0 and not streaming:
        if len(dataset) < 2:
            raise InvalidArtifactError("the dataset has fewer than 2 documents: too few to hold any out for "
                                       "evaluation; add data or set eval_fraction=0")
        split = dataset.train_test_split(test_size=config.eval_fraction, seed=config.seed)
        dataset, eval_dataset = split["train"], split["test"]

    checkpoints = checkpoint_folder(out, config.checkpoint_dir, stage=stage)
    if isinstance(config.training_args, transformers.TrainingArguments):  # pragma: no cover - API convenience
        args = config.training_args
    else:
        args = training_arguments(
            checkpoints, config.training_args, seed=config.seed, has_eval=eval_dataset is not None,
            streaming=streaming, early_stopping_patience=config.early_stopping_patience, strategy=config.strategy,
            recipe_defaults={"save_strategy": "steps", "save_steps": 200, "per_device_train_batch_size": 8,
                             "per_device_eval_batch_size": 8, "include_num_input_tokens_seen": True,
                             # every weight of a causal LM takes part in the loss: skip DDP's extra graph walk
                             "ddp_find_unused_parameters": False})
    if config.strategy != "ddp" and (args.use_cpu or args.device.type != "cuda"):
        # accelerate shards only on GPUs: on a CPU it would quietly train as DDP under the strategy's name
        raise ConfigError(f"strategy={config.strategy} shards the model across GPUs and this run has none "
                          f"({args.device.type}); use strategy=ddp here, or run it on GPU nodes", field="strategy",
                          value=config.strategy)
    if streaming and args.max_steps <= 0:
        raise ConfigError("a streamed dataset has no length: set training_args.max_steps",
                          field="training_args.max_steps")
    model, tokenizer, model_source = load_causal_lm(model, tokenizer)
    # under torchrun rank 0 alone writes the artifact: it holds the folder (locked, marked unfinished) to the end
    with writing_in_place(out, stage=stage) if args.should_save else contextlib.nullcontext():
        with args.main_process_first(desc="tokenising"):
            packing = {"block_size": config.block_size, "text_column": config.text_column,
                       "chat_prompt": config.chat_prompt, "packing": config.packing}
            train_tok = pack_for_clm(dataset, tokenizer, **packing)
            eval_tok = pack_for_clm(eval_dataset, tokenizer, **packing) if eval_dataset is not None else None
        if not streaming and len(train_tok) == 0:
            raise InvalidArtifactError(
                f"the dataset yields no training block of {config.block_size} tokens; lower block_size or add text")
        if eval_tok is not None and not streaming and len(eval_tok) == 0:
            raise InvalidArtifactError(
                f"the held-out split yields no block of {config.block_size} tokens; raise eval_fraction or lower block_size")

        total_params = sum(p.numel() for p in model.parameters())
        if config.lora_r > 0:
            model = _apply_lora(model, config)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        collator = (transformers.default_data_collator if config.packing
                    else transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False))
        cbs: list[Any] = list(callbacks)
        debugger = None
        if config.debug:
            from aptops.debug.callback import DebugConfig, TrainingDebugger

            debugger = TrainingDebugger(DebugConfig(log_interval=config.debug_interval, report_dir=str(out / "debug")))
            if bus is None:
                from aptops.plugins.bus import PluginBus

                bus = PluginBus()
            from aptops.plugins.bus import ConsoleCore

            (bus.bus if isinstance(bus, ConsoleCore) else bus).subscribe(debugger)
        if bus is not None:
            from aptops.plugins.hf import BusCallback

            cbs.append(BusCallback(bus))
        if config.early_stopping_patience is not None:
            cbs.append(transformers.EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold))
        trainer = (trainer_cls or transformers.Trainer)(
            model=model, args=args, train_dataset=train_tok, eval_dataset=eval_tok, processing_class=tokenizer,
            data_collator=collator, callbacks=cbs, **dict(trainer_kwargs or {}))
        engaged = {"ddp": True, "fsdp": trainer.is_fsdp_enabled, "deepspeed": trainer.is_deepspeed_enabled}[config.strategy]
        if not engaged:
            raise ConfigError(f"strategy={config.strategy} was asked for but the Trainer did not enable it "
                              "(check training_args for settings that turn it off)", field="strategy")
        resume = resume_point(checkpoints, config.resume)
        if resume:
            log.info("resuming from %s", resume)
        started = time.perf_counter()
        train_out = trainer.train(resume_from_checkpoint=resume)
        wall = time.perf_counter() - started

        metrics: dict[str, float] = {
            "train_loss": float(train_out.training_loss), "global_step": float(trainer.state.global_step),
            "train_runtime_s": float(train_out.metrics.get("train_runtime", wall)),
            "total_params": float(total_params), "trainable_params": float(trainable),
            "world_size": float(args.world_size),
        }
        tokens = float(trainer.state.num_input_tokens_seen or 0)
        if tokens:
            metrics["tokens_seen"] = tokens
            metrics["tokens_per_second"] = tokens / max(metrics["train_runtime_s"], 1e-9)
        if debugger is not None:
            metrics.update(debugger.summary())
        if resume:
            metrics["resumed_from_step"] = float(checkpoint_step(resume))
        if eval_tok is not None:
            ev = trainer.evaluate()
            metrics.update({k: float(v) for k, v in ev.items() if k.startswith("eval_") and isinstance(v, int | float)
                            and not k.endswith(("_runtime", "_per_second"))})
            metrics["eval_loss"] = float(ev["eval_loss"])
            metrics["perplexity"] = perplexity(metrics["eval_loss"])
        bad = [k for k in ("train_loss", "eval_loss") if k in metrics and not math.isfinite(metrics[k])]

        final = trainer.model
        if config.lora_r > 0 and config.merge_lora:
            final = final.merge_and_unload()
        if trainer.is_world_process_zero():
            for_inference(final).save_pretrained(out)  # no use_cache=False or checkpointing left from training
            tokenizer.save_pretrained(out)
            _copy_parent_lineage(model_source, out)
            write_lineage(out, stage=stage, inputs={"model": model_source, "dataset": ds_source, **(lineage_inputs or {})},
                          config=dict(lineage_config) if lineage_config is not None else to_dict(config), metrics=metrics)
            write_json(out / "metrics.json", metrics)
            write_json(out / "history.json", trainer.state.log_history)  # the curves, without the checkpoints
            if heldout_dir is not None and eval_dataset is not None and not streaming:
                _write_heldout(eval_dataset, Path(heldout_dir), config.text_column)
            report = _report(out, trainer.state.log_history, metrics, stage)
            outputs = {"model": str(out), "report": str(report)}
            if debugger is not None and debugger.report:
                outputs["debug_report"] = debugger.report["html"]
            result = StageResult(stage, outputs=outputs, metrics=metrics,
                                 details={"resumed_from": resume, "lora": config.lora_r > 0,
                                          "adapter_only": config.lora_r > 0 and not config.merge_lora})
            if bad:
                raise InvalidArtifactError(f"training diverged: {', '.join(bad)} is not finite; lower the learning "
                                           "rate or enable gradient clipping (training_args.max_grad_norm)")
            if not config.keep_checkpoints:  # optimizer state is 2-3x the model: the artifact carries the model only
                shutil.rmtree(checkpoints, ignore_errors=True)
            finish_artifact(out, result)
        else:
            result = StageResult(stage, outputs={"model": str(out)}, metrics=metrics)
        if args.world_size > 1:
            trainer.accelerator.wait_for_everyone()
        return result


def _write_heldout(dataset: Any, folder: Path, text_column: str) -> None:
    from aptops.core.artifacts import atomic_output

    with atomic_output(folder) as tmp:
        dataset.select_columns([text_column]).to_parquet(str(tmp / "part-00000.parquet"))
        finish_artifact(tmp, StageResult("train", outputs={"dataset": str(folder)},
                                         metrics={"rows": float(len(dataset))}, details={"role": "held-out split"}))


def _copy_parent_lineage(model_source: str, out: Path) -> None:
    target = out / LINEAGE_FILE
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    parent = Path(model_source) / LINEAGE_FILE
    if parent.is_file():
        shutil.copy2(parent, target)


def train_model(model_path: str | Path, dataset: Any, *, output_dir: str | Path, config: TrainConfig | None = None,
                heldout_dir: str | Path | None = None) -> StageResult:
    """The stage entry point of the CLI and the component: paths in, a model artifact out."""
    return train_with_hf_trainer(str(model_path), None, dataset, output_dir, config or TrainConfig(),
                                 heldout_dir=heldout_dir)


def compare_models(base: Any, trained: str | Path, dataset: Any, *, output_dir: str | Path,
                   config: EvalConfig | None = None) -> StageResult:
    """Perplexity of the base and the trained model on the same held-out text, written as an artifact."""
    from aptops.core import report
    from aptops.core.artifacts import atomic_output

    config = config or EvalConfig()
    before = evaluate_perplexity(str(base), dataset, config)
    after = evaluate_perplexity(str(trained), dataset, config)
    metrics = {"perplexity_base": before["perplexity"], "perplexity_trained": after["perplexity"],
               "loss_base": before["loss"], "loss_trained": after["loss"], "eval_tokens": after["tokens"],
               "perplexity_ratio": after["perplexity"] / before["perplexity"]}
    with atomic_output(output_dir) as tmp:
        write_json(tmp / "evaluation.json", metrics)
        rows = [("base", str(base), before["loss"], before["perplexity"]),
                ("trained", str(trained), after["loss"], after["perplexity"])]
        html = report.page("aptops evaluate", [
            ("Held-out perplexity", report.table(rows, header=["model", "path", "loss", "perplexity"])),
            ("Settings", report.table({"block_size": config.block_size, "tokens": int(after["tokens"])})),
        ])
        (tmp / "report.html").write_text(html, encoding="utf-8")
        result = StageResult("train", outputs={"evaluation": str(output_dir), "report": str(Path(output_dir) / "report.html")},
                             metrics=metrics)
        finish_artifact(tmp, result)
    return result
