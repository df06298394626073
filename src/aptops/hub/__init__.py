"""The hub stage: models and datasets in and out of a Hugging Face Hub, and honest model cards.

``import_from_huggingface`` / ``export_to_huggingface`` move models (safetensors only, LFS for large
files, a tagged revision on request), ``load_hf_dataset`` loads Hub datasets, local files and aptops
dataset artifacts, and ``create_model_card`` writes a card from the numbers the stages recorded.
"""

from aptops.hub.card import create_model_card, lineage_chain
from aptops.hub.datasets import load_hf_dataset
from aptops.hub.models import (
    check_model_folder,
    download_model,
    export_to_huggingface,
    fetch_model,
    import_from_huggingface,
)

__all__ = [
    "check_model_folder", "create_model_card", "download_model", "export_to_huggingface",
    "fetch_model", "import_from_huggingface", "lineage_chain", "load_hf_dataset",
]
