"""The train stage's recipe: causal-LM fine-tuning of a model folder on a dataset, written as a model artifact.

Try it on a CPU with the tiny SmolLM2 copy the demo builds (or any causal LM folder)::

    aptops train run runs/smollm2 runs/clean --out runs/train \\
        --set block_size=128 --set training_args.max_steps=20

The Trainer run itself (packing, held-out split, checkpoints and resume, early stopping, LoRA, the event bus and
the debugger, the artifact) is :func:`aptops.lm.training.run_trainer`, the building block every training stage
shares; the before/after comparison is :func:`aptops.lm.compare.compare_models`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aptops.core.artifacts import StageResult
from aptops.lm.training import TrainConfig, run_trainer


def train_model(model_path: str | Path, dataset: Any, *, output_dir: str | Path, config: TrainConfig | None = None,
                heldout_dir: str | Path | None = None) -> StageResult:
    """The stage entry point of the CLI and the component: paths in, a model artifact out."""
    return run_trainer(str(model_path), None, dataset, output_dir=output_dir, config=config or TrainConfig(),
                       heldout_dir=heldout_dir)
