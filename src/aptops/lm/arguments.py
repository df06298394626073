"""``transformers.TrainingArguments`` with the defaults every aptops training recipe shares.

A recipe passes its own defaults (a causal LM saves every 200 steps and counts tokens; the multimodal
model saves every epoch); the user's ``training_args`` override both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.core.logging import progress_disabled


def training_arguments(output_dir: str | Path, overrides: Mapping[str, Any] | None = None, *, seed: int = 42,
                       has_eval: bool = False, streaming: bool = False, early_stopping_patience: int | None = None,
                       recipe_defaults: Mapping[str, Any] | None = None) -> Any:
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

    Raises:
        ConfigError: a field ``TrainingArguments`` does not know, inconsistent values, or early stopping
            without evaluation.
    """
    transformers = require("transformers", extra="train", feature="training")
    user = dict(overrides or {})
    defaults: dict[str, Any] = {
        "report_to": "none", "logging_steps": 10, "save_total_limit": 2, "seed": seed, "data_seed": seed,
        "disable_tqdm": progress_disabled(), "eval_strategy": "epoch" if has_eval and not streaming else "no",
        **dict(recipe_defaults or {}),
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
