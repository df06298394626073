"""The hub stage: models and datasets in and out of a Hugging Face Hub, and honest model cards.

``fetch_model`` brings a Hub model (or a local folder) in as an artifact (safetensors only, remote code
dropped unless trusted), ``publish_model`` publishes one (LFS for large files, a tagged revision on request)
with a card from the numbers the stages recorded (``create_model_card``); ``load_hf_dataset`` loads Hub
datasets, local files and aptops dataset artifacts. ``import_from_huggingface`` / ``export_to_huggingface``
are the old plugin's signatures (:mod:`aptops.hub.legacy`).
"""

from aptops.hub.card import create_model_card, lineage_chain
from aptops.hub.legacy import export_to_huggingface, import_from_huggingface
from aptops.hub.models import FetchConfig, PublishConfig, drop_remote_code, fetch_model, publish_model
from aptops.lm.datasets import load_hf_dataset  # the toolkit's loaders, part of the hub stage's public API
from aptops.lm.loading import check_model_folder, download_model

__all__ = [
    "FetchConfig", "PublishConfig", "check_model_folder", "create_model_card", "download_model", "drop_remote_code",
    "export_to_huggingface", "fetch_model", "import_from_huggingface", "lineage_chain", "load_hf_dataset",
    "publish_model",
]
