"""The old Model Pruning plugin's API (``model_pruning``), kept for its users.

``prune_model`` keeps the old signature as a thin wrapper over the stage contract in
:mod:`aptops.prune.recipe` (``model, dataset, *, output_dir, config``); the other functions kept their old
signatures and are the same objects as the stage's.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from aptops.core.artifacts import StageResult
from aptops.prune.recipe import PruneConfig, fine_tune_after_pruning, lottery_ticket_pruning
from aptops.prune.recipe import prune_model as _prune_model
from aptops.prune.structured import structured_pruning
from aptops.prune.unstructured import magnitude_pruning, taylor_pruning

__all__ = [
    "fine_tune_after_pruning", "lottery_ticket_pruning", "magnitude_pruning", "prune_model", "structured_pruning",
    "taylor_pruning",
]


def prune_model(model: Any, train_data: Any, val_data: Any = None, target_sparsity: float | None = None,
                method: str | None = None, output_dir: str | Path | None = None, config: PruneConfig | None = None,
                tokenizer: Any = None) -> StageResult:
    """The old ``prune_model(model, train_data, val_data, target_sparsity, method)``.

    ``target_sparsity`` and ``method`` override ``config``'s; ``output_dir`` defaults to a new temporary
    folder (the result names it), never the working folder.
    """
    cfg = config or PruneConfig()
    overrides = {k: v for k, v in (("target_sparsity", target_sparsity), ("method", method)) if v is not None}
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    out = output_dir if output_dir is not None else tempfile.mkdtemp(prefix="aptops-prune-")
    return _prune_model(model, train_data, output_dir=out, config=cfg, eval_dataset=val_data, tokenizer=tokenizer)
