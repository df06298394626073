"""The old Ollama Export plugin's API (``ollama_export``), kept for its users.

``export_to_gguf(model_path, output_path, quantization_type)`` is a thin wrapper with the old signature over
the stage contract in :mod:`aptops.export.recipe`; new code calls :func:`aptops.export.export_to_gguf`
(``model, *, output_dir, config``). ``create_modelfile``, ``register_to_ollama`` and ``test_model`` kept their
old signatures and are the same objects as the stage's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from aptops.core.artifacts import StageResult
from aptops.core.errors import ConfigError
from aptops.export.ollama import create_modelfile, register_to_ollama, test_model
from aptops.export.recipe import ExportConfig
from aptops.export.recipe import export_to_gguf as _export_to_gguf
from aptops.lm.gguf import QUANT_TYPES

__all__ = ["create_modelfile", "export_to_gguf", "register_to_ollama", "test_model"]


def export_to_gguf(model_path: str | Path, output_path: str | Path, quantization_type: str | None = None,
                   vocab_type: str | None = None, *, config: ExportConfig | None = None) -> StageResult:
    """The old ``export_to_gguf(model_path, output_path, quantization_type)``.

    ``quantization_type`` (the old plugin's lower-case names too: ``q4_k_m``) and ``vocab_type``, when given,
    override the config's; everything else is :func:`aptops.export.export_to_gguf`.
    """
    config = config or ExportConfig()
    if quantization_type is not None:
        wanted = quantization_type.upper()
        if wanted not in QUANT_TYPES:
            raise ConfigError(f"unknown quantization {quantization_type!r}; use one of {list(QUANT_TYPES)}",
                              field="quantization_type", value=quantization_type)
        config = replace(config, quantization=wanted)
    if vocab_type is not None:
        config = replace(config, vocab_type=vocab_type)
    return _export_to_gguf(model_path, output_dir=output_path, config=config)
