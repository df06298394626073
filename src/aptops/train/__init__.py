"""The train stage: causal-LM fine-tuning with the Hugging Face Trainer, written as a model artifact."""

from aptops.train.trainer import (
    EvalConfig,
    TrainConfig,
    compare_models,
    evaluate_perplexity,
    load_causal_lm,
    load_text_dataset,
    tokenize_for_clm,
    train_model,
    train_with_hf_trainer,
)

__all__ = [
    "EvalConfig", "TrainConfig", "compare_models", "evaluate_perplexity", "load_causal_lm", "load_text_dataset", "tokenize_for_clm", "train_model",
    "train_with_hf_trainer",
]
