"""``transformers.TrainingArguments`` with the defaults every aptops training recipe shares.

A recipe passes its own defaults (a causal LM saves every 200 steps and counts tokens; the multimodal
model saves every epoch); the user's ``training_args`` override both.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aptops.core.config import check_range, load_yaml, show
from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.core.logging import progress_disabled

# Sanity bounds of the TrainingArguments fields a typo or a bad value hurts most: (min, max), inclusive. A
# value outside fails when the config is built, before any data or model is loaded (transformers checks
# few of them, and only once a run is under way: a negative batch size surfaces in the DataLoader).
_BOUNDS: dict[str, tuple[float, float]] = {
    "per_device_train_batch_size": (1, 65_536), "per_device_eval_batch_size": (1, 65_536),
    "gradient_accumulation_steps": (1, 65_536), "eval_accumulation_steps": (1, 65_536),
    "num_train_epochs": (0, 100_000), "learning_rate": (0, 10), "weight_decay": (0, 10),
    "warmup_steps": (0, 10_000_000), "max_grad_norm": (0, 1e6),
    "adam_beta1": (0, 1), "adam_beta2": (0, 1), "adam_epsilon": (0, 1), "label_smoothing_factor": (0, 1),
    "save_total_limit": (1, 100_000), "dataloader_num_workers": (0, 1024), "seed": (0, 2**32 - 1),
    "data_seed": (0, 2**32 - 1),
}
#: A run longer than this many optimizer steps is a typo, not a plan (-1: set by epochs).
MAX_STEPS = 10_000_000


def parse_training_args(args: Mapping[str, Any], *, field: str = "training_args") -> dict[str, Any]:
    """A config's ``training_args`` read and checked before any work: ``--set`` strings as the values they spell
    (``1e-4`` a float), every name a ``TrainingArguments`` field (when transformers is installed here), every
    value within :func:`check_training_args`' bounds.

    Raises:
        ConfigError: an unknown field (with the nearest known one) or a bad value.
    """
    parsed = {str(k): (_scalar(v) if isinstance(v, str) else v) for k, v in dict(args).items()}
    known = _training_argument_fields()
    for key in parsed:
        if known is not None and key not in known:
            import difflib

            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else " (see transformers.TrainingArguments)"
            raise ConfigError(f"{field}.{key} is not a TrainingArguments field{hint}", field=f"{field}.{key}",
                              value=show(parsed[key]))
    check_training_args(parsed, field=field)
    return parsed


@functools.cache
def _training_argument_fields() -> frozenset[str] | None:
    """The fields of ``transformers.TrainingArguments``, or ``None`` where transformers is not installed (a
    CPU image that only compiles or describes a config)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return None
    import dataclasses

    import transformers

    return frozenset(f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init)


def _scalar(text: str) -> Any:
    """A ``--set`` value as the type it spells: ``1e-3`` a float, ``true`` a bool, ``[a, b]`` a list.

    Words stay words: YAML 1.1 would turn ``save_strategy=no`` into ``False``, and ``report_to=none`` is
    a string to the Trainer.
    """

    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~"):  # not "none": report_to="none" means no integration
        return None
    if text.strip().startswith(("[", "{")):
        return load_yaml(text, source=f"the value {show(text)}")
    return text



def check_training_args(args: Mapping[str, Any], *, field: str = "training_args") -> None:
    """Refuse ``TrainingArguments`` values that cannot be meant: a number that is not finite anywhere, a size or
    a rate out of its bounds, ``max_steps`` beyond :data:`MAX_STEPS` (-1: the epochs decide; 0: no training, the model
    is measured and written as it comes); and a steps field given as a fraction
    (``logging_steps``, ``eval_steps``, ``save_steps`` in (0, 1) are ratios of the run) must be positive.

    Raises:
        ConfigError: naming the field, the value and what is allowed.
    """
    for key, value in args.items():
        name = f"{field}.{key}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if key == "max_steps" and value == -1:
            continue
        if key == "max_steps":
            check_range(name, value, min_value=0, max_value=MAX_STEPS)
        elif key in ("logging_steps", "eval_steps", "save_steps"):
            check_range(name, value, min_value=0, min_inclusive=False, max_value=MAX_STEPS)
        else:  # every number must be finite (check_range refuses nan / inf), a bounded one within its bounds
            low, high = _BOUNDS.get(key, (None, None))
            check_range(name, value, min_value=low, max_value=high)


#: DeepSpeed ZeRO stage 3 with every size left to the Trainer ("auto": taken from TrainingArguments)
ZERO3: dict[str, Any] = {
    "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                          "stage3_gather_16bit_weights_on_model_save": True},
    "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
    "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
}


def strategy_arguments(strategy: str) -> dict[str, Any]:
    """The ``TrainingArguments`` that select a distributed strategy (the Trainer and accelerate do the sharding).

    ``ddp``: nothing (torchrun plus the Trainer is DDP). ``fsdp``: FSDP2, parameters, gradients and optimizer
    state sharded and resharded after each forward, each transformer block its own unit (the wrap policy reads
    the block class from the model's ``_no_split_modules``), one full HF-compatible state dict on save. ``deepspeed``: ZeRO-3 (:data:`ZERO3`).

    Raises:
        ConfigError: an unknown strategy; MissingDependencyError: DeepSpeed is not installed.
    """
    if strategy == "ddp":
        return {}
    if strategy == "fsdp":
        return {"fsdp": True,
                "fsdp_config": {"version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                "state_dict_type": "FULL_STATE_DICT"}}
    if strategy == "deepspeed":
        require("deepspeed", extra="train", feature="DeepSpeed ZeRO-3 training (pip install deepspeed)")
        return {"deepspeed": ZERO3}
    raise ConfigError(f"strategy {strategy!r} is not one of ddp, fsdp, deepspeed", field="strategy", value=strategy)


def training_arguments(output_dir: str | Path, overrides: Mapping[str, Any] | None = None, *, seed: int = 42,
                       has_eval: bool = False, streaming: bool = False, early_stopping_patience: int | None = None,
                       recipe_defaults: Mapping[str, Any] | None = None, strategy: str = "ddp") -> Any:
    """``TrainingArguments`` for a run writing its checkpoints to ``output_dir``.

    Args:
        output_dir: where the Trainer writes ``checkpoint-N`` folders.
        overrides: the user's ``training_args`` (any ``TrainingArguments`` field); they win over every default.
        seed: the seed of the Trainer and its data order.
        has_eval: an evaluation set exists (evaluate every epoch, or every 200 steps when streaming).
        streaming: the training set is an ``IterableDataset`` (no epochs: steps only).
        early_stopping_patience: when set, evaluation and saving share one schedule and the best model is
            loaded at the end (what ``EarlyStoppingCallback`` needs).
        recipe_defaults: the recipe's own defaults, between the shared ones and ``overrides``.
        strategy: ``ddp``, ``fsdp`` or ``deepspeed`` (:func:`strategy_arguments`), under ``overrides``.

    Raises:
        ConfigError: a field ``TrainingArguments`` does not know, inconsistent values, or early stopping
            without evaluation.
    """
    transformers = require("transformers", extra="train", feature="training")
    user = dict(overrides or {})
    defaults: dict[str, Any] = {
        # a log every 1% of the run (every step of a short one): the report's curves have a point per logged step
        # whatever the run's length
        "report_to": "none", "logging_steps": 0.01, "save_total_limit": 2, "seed": seed, "data_seed": seed,
        "disable_tqdm": progress_disabled(), "eval_strategy": "epoch" if has_eval and not streaming else "no",
        # the held-out loss before the first step too: the curve starts where the model started
        "eval_on_start": has_eval,
        **dict(recipe_defaults or {}), **strategy_arguments(strategy),
    }
    if has_eval and streaming:
        defaults.update(eval_strategy="steps", eval_steps=200)
    if early_stopping_patience is not None:
        if not has_eval:
            raise ConfigError("early stopping needs evaluation: set eval_fraction > 0 or pass an eval dataset",
                              field="early_stopping_patience", value=early_stopping_patience)
        strategy = user.get("eval_strategy", "epoch" if "eval_steps" not in user else "steps")
        defaults.update(eval_strategy=strategy, save_strategy=user.get("save_strategy", strategy),
                        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
        if strategy == "steps":
            steps = user.get("eval_steps", defaults.get("eval_steps", 200))
            defaults.update(eval_steps=steps, save_steps=user.get("save_steps", steps))
    try:
        return transformers.TrainingArguments(output_dir=str(output_dir), **(defaults | user))
    except TypeError as exc:
        raise ConfigError(f"training_args: {exc} (see transformers.TrainingArguments for the fields)",
                          field="training_args") from None
    except ValueError as exc:
        raise ConfigError(f"training_args are inconsistent: {exc}", field="training_args") from None
