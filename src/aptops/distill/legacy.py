"""The old Model Distillation plugin's API (``model_distillation``), kept for its users.

These are thin wrappers with the old signatures over the stage contract in :mod:`aptops.distill.recipe`;
new code calls :func:`aptops.distill.distill_model` (``teacher, dataset, *, output_dir, config``).
``evaluate_compression(original_model, distilled_model, test_data)`` returns the old plugin's dict over
:func:`aptops.lm.compare.evaluate_compression`. The per-strategy functions (``response_distillation``
...) kept their old signatures and are the same objects as the stage's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aptops.core.artifacts import StageResult
from aptops.distill.recipe import (
    DistillConfig,
    attention_distillation,
    feature_distillation,
    relation_distillation,
    response_distillation,
)
from aptops.distill.recipe import distill_model as _distill_model
from aptops.lm import compare as compression

__all__ = [
    "attention_distillation", "distill_model", "evaluate_compression", "feature_distillation",
    "relation_distillation", "response_distillation",
]


def distill_model(teacher_model: Any, student_model: Any, train_data: Any, val_data: Any = None,
                  config: DistillConfig | Mapping[str, Any] | None = None, output_dir: str | Path | None = None,
                  **kwargs: Any) -> StageResult:
    """The old ``distill_model(teacher_model, student_model, train_data, val_data, config)``.

    Args:
        teacher_model / student_model / train_data / val_data: as the old plugin took them (``student_model``
            ``None``: one is made from the teacher).
        config: a :class:`DistillConfig`, or the old plugin's flat mapping (``{"temperature": 1, "alpha": 0.8,
            "block_size": 128, ...}``), sorted into the nested config.
        output_dir: where the student is written; the old plugin had none, so by default a new temporary
            folder (the result's ``outputs["model"]`` names it), never the working folder.
        **kwargs: ``tokenizer``, ``callbacks``, ``bus`` as for the stage.
    """
    cfg = config if isinstance(config, DistillConfig) or config is None else _from_flat(config)
    out = output_dir if output_dir is not None else tempfile.mkdtemp(prefix="aptops-distill-")
    return _distill_model(teacher_model, train_data, output_dir=out, config=cfg, student=student_model,
                          eval_dataset=val_data, **kwargs)


def evaluate_compression(original_model: Any, distilled_model: Any, test_data: Any,
                         output_dir: str | Path | None = None, config: compression.CompressionConfig | None = None, *,
                         tokenizer: Any = None) -> dict[str, Any]:
    """The old ``evaluate_compression(original_model, distilled_model, test_data)``: the comparison as a dict
    (``{"original": {...}, "compressed": {...}, "ratios": {...}}``), the report written to ``output_dir`` when
    given (nowhere otherwise), and, as the old plugin did, the headline numbers copied into the distilled model
    folder's lineage when it is an aptops artifact."""
    with tempfile.TemporaryDirectory(prefix="aptops-compression-") as scratch:
        out = output_dir if output_dir is not None else Path(scratch) / "report"
        result = compression.evaluate_compression(original_model, distilled_model, test_data, output_dir=out,
                                                  config=config, tokenizer=tokenizer)
    if isinstance(distilled_model, str | Path):
        compression.record_in_lineage(Path(distilled_model), result.details)
    return result.details


def _from_flat(flat: Mapping[str, Any]) -> DistillConfig:
    """Sort the old plugin's flat keys into the configs ``DistillConfig`` nests (``objective``, ``training``)
    and its own top level; the nested configs are read from its type hints, not listed here."""
    import dataclasses
    import typing

    from aptops.core.config import from_dict

    hints = typing.get_type_hints(DistillConfig)
    owners = {section: {f.name for f in dataclasses.fields(hints[section])}
              for section in (f.name for f in dataclasses.fields(DistillConfig)) if dataclasses.is_dataclass(hints[section])}
    nested: dict[str, Any] = {section: {} for section in owners}
    for key, value in flat.items():
        if key in owners and isinstance(value, Mapping):
            nested[key].update(value)
            continue
        section = next((s for s, names in owners.items() if key in names), None)
        if section is None:
            nested[key] = value  # a top-level key, or an unknown one that from_dict names
        else:
            nested[section][key] = value
    return from_dict(DistillConfig, nested)
