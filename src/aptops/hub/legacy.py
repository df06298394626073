"""The old HuggingFace Integration plugin's hub functions (``huggingface_integration``), kept for its users.

``export_to_huggingface(model, tokenizer, repo_name, ...)`` is a thin wrapper with the old signature over the
stage contract :func:`aptops.hub.publish_model` (``model, *, repo, config``) and returns the commit URL as the
old plugin did; ``import_from_huggingface`` returns ``(model, tokenizer)`` objects as the old plugin did (the
artifact-writing contract is :func:`aptops.hub.fetch_model`). ``load_hf_dataset`` and ``create_model_card``
kept their old signatures and are the same objects as the stage's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.hub.card import create_model_card
from aptops.hub.models import PublishConfig, publish_model
from aptops.lm.datasets import load_hf_dataset
from aptops.lm.loading import download_model

__all__ = ["create_model_card", "export_to_huggingface", "import_from_huggingface", "load_hf_dataset"]


def import_from_huggingface(repo_name: str, local_dir: str | Path | None = None, *, revision: str | None = None,
                            token: str | None = None, trust_remote_code: bool = False,
                            torch_dtype: str | None = "auto") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from the Hub (or a local folder).

    Args:
        repo_name: ``org/name`` on the Hub, or a path to a local model folder.
        local_dir: where to place the downloaded files (default: the Hugging Face cache).
        revision: a branch, tag or commit.
        token: a Hub token; default: ``HF_TOKEN`` or the saved login.
        trust_remote_code: run the repo's own modelling code (off unless asked for).
        torch_dtype: the dtype to load in (``auto``: as stored).

    Returns:
        ``(model, tokenizer)``.
    """
    transformers = require("transformers", extra="train", feature="loading a model")
    folder = download_model(repo_name, local_dir, revision=revision, token=token)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, trust_remote_code=trust_remote_code, dtype=torch_dtype, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ConfigError(f"{repo_name!r} needs its own modelling code; pass trust_remote_code=True only if "
                              "you trust that repo", field="trust_remote_code", value=False) from None
        raise InvalidArtifactError(f"cannot load {repo_name!r} as a causal LM: {exc}", path=str(folder)) from None
    return model, tokenizer


def export_to_huggingface(model: Any, tokenizer: Any, repo_name: str, *, private: bool = False,
                          commit_message: str | None = None, token: str | None = None,
                          model_info: Mapping[str, Any] | None = None, revision_tag: str | None = None,
                          exist_ok: bool = True) -> str:
    """The old ``export_to_huggingface(model, tokenizer, repo_name, ...)``: :func:`aptops.hub.publish_model`,
    returning the URL of the commit."""
    config = PublishConfig(private=private, commit_message=commit_message, revision_tag=revision_tag,
                           model_info=dict(model_info or {}), exist_ok=exist_ok)
    return publish_model(model, repo=repo_name, config=config, tokenizer=tokenizer, token=token).outputs["commit"]
