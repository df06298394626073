"""Causal LMs, tokenizers and text datasets, loaded the one way every stage loads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ConfigError


def load_text_dataset(dataset: Any, text_column: str) -> Any:
    """A dataset from anything :func:`aptops.hub.load_hf_dataset` takes, checked for its text column.

    Args:
        dataset: a ``datasets.Dataset`` / ``IterableDataset``, or a path or Hub id for ``load_hf_dataset``.
        text_column: the column that must hold the text.

    Raises:
        ConfigError: the dataset has no ``text_column``.
    """
    if isinstance(dataset, str | Path):
        from aptops.hub.datasets import load_hf_dataset

        dataset = load_hf_dataset(dataset)
    columns = getattr(dataset, "column_names", None)
    if columns is not None and text_column not in columns:
        raise ConfigError(f"the dataset has no column {text_column!r}; it has {list(columns)}. Set text_column",
                          field="text_column", value=text_column)
    return dataset


def check_model_source(model: Any) -> None:
    """Fail now, before any data is read, if ``model`` names no loadable model: a local folder must hold
    safetensors and a config, a Hub id must be ``namespace/name``. Objects pass; nothing is downloaded.

    Raises:
        ArtifactNotFoundError / InvalidArtifactError / ConfigError: what is wrong with the reference.
    """
    if not isinstance(model, str | Path):
        return
    from aptops.hub import client
    from aptops.hub.models import _is_local, check_model_folder

    if _is_local(model):
        check_model_folder(model)
    else:
        client.check_repo_id(str(model), what="model repo")


def load_causal_lm(model: Any, tokenizer: Any = None) -> tuple[Any, Any, str]:
    """A causal LM and its tokenizer from a folder / Hub id (safetensors only) or as given.

    Args:
        model: a ``PreTrainedModel``, a local folder or a Hub id.
        tokenizer: its tokenizer, a folder to load one from, or ``None`` (loaded from ``model``'s folder).

    Returns:
        ``(model, tokenizer, source)``; the tokenizer has a pad token (EOS where it had none).

    Raises:
        ConfigError: ``model`` is an object and no tokenizer was given.
    """
    transformers = require("transformers", extra="train", feature="loading a causal LM")
    source = "in-memory model"
    if isinstance(model, str | Path):
        from aptops.hub.models import download_model

        source = str(model)
        folder = download_model(str(model))
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="auto", use_safetensors=True)
        if tokenizer is None:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    elif getattr(getattr(model, "config", None), "_name_or_path", ""):
        source = model.config._name_or_path
    if tokenizer is None:
        raise ConfigError("a tokenizer is needed when the model is passed as an object", field="tokenizer")
    if isinstance(tokenizer, str | Path):
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, source
