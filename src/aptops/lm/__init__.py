"""The shared language-model toolkit the training stages are built from.

Loading (safetensors only, from a folder or a Hub id), packing text into blocks, one held-out
loss / perplexity, checkpoint discovery, and the ``TrainingArguments`` defaults. ``train``, ``distill``,
``prune``, ``debug`` and ``multimodal`` are recipes composed of these pieces; none of them imports
another stage for them. Try it on a CPU::

    python -c "from aptops.lm import evaluate_perplexity; print(evaluate_perplexity('runs/train', 'runs/clean'))"
"""

from aptops.lm.arguments import check_training_args, parse_training_args, training_arguments
from aptops.lm.checkpoints import (
    CHECKPOINTS,
    checkpoint_folder,
    checkpoint_step,
    last_complete_checkpoint,
    resume_point,
)
from aptops.lm.loading import check_model_source, load_causal_lm, load_text_dataset
from aptops.lm.packing import pack_for_clm
from aptops.lm.scoring import (
    EvalConfig,
    eval_blocks,
    evaluate_perplexity,
    heldout_loss,
    next_token_scores,
    perplexity,
)

__all__ = [
    "CHECKPOINTS",
    "EvalConfig",
    "check_model_source",
    "check_training_args",
    "checkpoint_folder",
    "checkpoint_step",
    "eval_blocks",
    "evaluate_perplexity",
    "heldout_loss",
    "last_complete_checkpoint",
    "load_causal_lm",
    "load_text_dataset",
    "next_token_scores",
    "pack_for_clm",
    "parse_training_args",
    "perplexity",
    "resume_point",
    "training_arguments",
]
