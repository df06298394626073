"""The train stage: causal-LM fine-tuning with the Hugging Face Trainer, written as a model artifact.

The Trainer run is :func:`aptops.lm.training.run_trainer` and the comparison :func:`aptops.lm.compare.compare_models`;
this stage is the recipe (``train_model``) and the old entry point (``train_with_hf_trainer``).
"""

from aptops.lm.compare import compare_models
from aptops.lm.scoring import EvalConfig, evaluate_perplexity
from aptops.lm.training import TrainConfig, run_trainer
from aptops.train.legacy import train_with_hf_trainer
from aptops.train.recipe import train_model

__all__ = ["EvalConfig", "TrainConfig", "compare_models", "evaluate_perplexity", "run_trainer", "train_model",
           "train_with_hf_trainer"]
