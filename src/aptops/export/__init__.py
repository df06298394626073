"""The export stage: Hugging Face → GGUF (written with ``gguf``, quantized by llama.cpp), read back and
verified against the source model; an Ollama Modelfile from the chat template, registration over Ollama's
HTTP API, and smoke tests through Ollama or llama.cpp."""

from aptops.export.ollama import create_modelfile, register_to_ollama, test_model
from aptops.export.recipe import ExportConfig, export_to_gguf
from aptops.export.verify import GateConfig, verify_gguf
from aptops.lm.gguf import (
    QUANT_TYPES,
    convert_to_gguf,
    inspect_gguf,
    pre_tokenizer_name,
    quantize_gguf,
)

__all__ = [
    "QUANT_TYPES", "ExportConfig", "GateConfig", "convert_to_gguf", "create_modelfile", "export_to_gguf", "inspect_gguf",
    "pre_tokenizer_name", "quantize_gguf", "register_to_ollama", "test_model", "verify_gguf",
]
