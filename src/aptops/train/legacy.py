"""The old train entry point, ``train_with_hf_trainer(model, tokenizer, dataset, output_dir, training_args)``,
kept for its users as a thin wrapper over :func:`aptops.lm.training.run_trainer`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aptops.core.artifacts import StageResult
from aptops.lm.training import TrainConfig, run_trainer

__all__ = ["train_with_hf_trainer"]


def train_with_hf_trainer(model: Any, tokenizer: Any, dataset: Any, output_dir: str | Path,
                          training_args: Mapping[str, Any] | TrainConfig | None = None, *,
                          eval_dataset: Any = None, bus: Any = None, callbacks: Sequence[Any] = (),
                          dataset_source: str | None = None, heldout_dir: str | Path | None = None,
                          stage: str = "train", trainer_cls: Any = None, trainer_kwargs: Mapping[str, Any] | None = None,
                          lineage_inputs: Mapping[str, str] | None = None,
                          lineage_config: Mapping[str, Any] | None = None) -> StageResult:
    """The old signature: ``training_args`` is a :class:`TrainConfig` or a mapping of ``TrainingArguments``
    fields (shorthand for ``TrainConfig(training_args=...)``); everything else is :func:`run_trainer`'s."""
    config = training_args if isinstance(training_args, TrainConfig) else TrainConfig(
        training_args=dict(training_args or {}))
    return run_trainer(model, tokenizer, dataset, eval_dataset, output_dir=output_dir, config=config, stage=stage,
                       trainer_cls=trainer_cls, trainer_kwargs=trainer_kwargs, callbacks=callbacks, bus=bus,
                       heldout_dir=heldout_dir, dataset_source=dataset_source, lineage_inputs=lineage_inputs,
                       lineage_config=lineage_config)
