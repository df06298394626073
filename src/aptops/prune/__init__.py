"""The prune stage: magnitude, Taylor and Wanda (unstructured, N:M), structured neurons / heads / filters
that physically shrink the model, lottery tickets, fine-tuning with fixed masks, and ``prune_model``."""

from aptops.prune.recipe import (
    MaskCallback,
    PruneConfig,
    cubic_schedule,
    fine_tune_after_pruning,
    lottery_ticket_pruning,
    prune_model,
)
from aptops.prune.structured import structured_pruning
from aptops.prune.unstructured import (
    magnitude_pruning,
    prunable_layers,
    sparsity_report,
    taylor_pruning,
    wanda_pruning,
    weight_masks,
)

__all__ = [
    "MaskCallback", "PruneConfig", "cubic_schedule", "fine_tune_after_pruning", "lottery_ticket_pruning",
    "magnitude_pruning", "prunable_layers", "prune_model", "sparsity_report", "structured_pruning", "taylor_pruning",
    "wanda_pruning", "weight_masks",
]
