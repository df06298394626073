"""The train stage: causal-LM fine-tuning with the Hugging Face Trainer, written as a model artifact.

Loading, packing, perplexity and checkpoints come from :mod:`aptops.lm`; this stage is the recipe.
"""

from aptops.lm import EvalConfig, evaluate_perplexity
from aptops.train.trainer import TrainConfig, compare_models, train_model, train_with_hf_trainer

__all__ = ["EvalConfig", "TrainConfig", "compare_models", "evaluate_perplexity", "train_model", "train_with_hf_trainer"]
