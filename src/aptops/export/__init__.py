"""The export stage: Hugging Face → GGUF (written with ``gguf``, quantized by llama.cpp), read back and
verified against the source model. Modelfile creation and Ollama registration come next."""

from aptops.export.convert import (
    QUANT_TYPES,
    convert_to_gguf,
    inspect_gguf,
    pre_tokenizer_name,
    quantize_gguf,
)
from aptops.export.stage import ExportConfig, export_to_gguf
from aptops.export.verify import GateConfig, verify_gguf

__all__ = [
    "QUANT_TYPES", "ExportConfig", "GateConfig", "convert_to_gguf", "export_to_gguf", "inspect_gguf",
    "pre_tokenizer_name", "quantize_gguf", "verify_gguf",
]
