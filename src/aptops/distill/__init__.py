"""The distill stage: response, feature, relation and attention distillation, combined in one Trainer loop,
students made from their teachers, and the compression report."""

from aptops.distill.distiller import Distiller, StrategyConfig, run_distillation
from aptops.distill.losses import attention_loss, feature_loss, relation_loss, response_loss
from aptops.distill.recipe import (
    DistillationTrainer,
    DistillConfig,
    attention_distillation,
    distill_model,
    feature_distillation,
    relation_distillation,
    response_distillation,
)
from aptops.distill.student import aligned_vocab, check_tokenizers, create_student
from aptops.lm.compare import CompressionConfig, compression_metrics, evaluate_compression

__all__ = [
    "CompressionConfig", "DistillConfig", "DistillationTrainer", "Distiller", "StrategyConfig", "aligned_vocab", "attention_distillation",
    "attention_loss", "check_tokenizers", "compression_metrics", "create_student", "distill_model", "evaluate_compression",
    "feature_distillation", "feature_loss", "relation_distillation", "relation_loss", "response_distillation",
    "response_loss", "run_distillation",
]
