"""Causal LMs, tokenizers and text datasets, loaded the one way every stage loads them: a local folder is checked
(safetensors only, every config and header parsed), a Hub id is snapshotted through :mod:`aptops.core.hub_client`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, ConfigError, InvalidArtifactError
from aptops.core.formats import check_model_files

PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # weights that run code when loaded: never copied
# What a model snapshot needs; pickled and framework-foreign weights are left on the Hub.
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "README.md"]


def is_local_model(name: str | Path) -> bool:
    """True when ``name`` is a local folder (or written as a path), not a Hub id."""
    return isinstance(name, Path) or Path(name).expanduser().is_dir() or str(name).startswith(("/", "./", "../", "~"))


def check_model_folder(folder: str | Path) -> Path:
    """Return ``folder`` if it holds a loadable safetensors model, else raise an error that says what is missing."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ArtifactNotFoundError(f"model folder {str(path)!r} does not exist", path=str(path))
    if not (path / "config.json").is_file():
        raise InvalidArtifactError(f"{str(path)!r} has no config.json: not a Hugging Face model folder "
                                   "(save one with model.save_pretrained(dir))", path=str(path))
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        hint = (f" It has pickled weights ({', '.join(pickled)}), which aptops does not load: convert them with "
                "model.save_pretrained(dir) (safetensors)." if pickled else "")
        raise InvalidArtifactError(f"{str(path)!r} has no *.safetensors weights.{hint}", path=str(path))
    return check_model_files(path)  # a damaged config, tokenizer or header named here, not deep in a loader


def download_model(repo_name: str, local_dir: str | Path | None = None, *, revision: str | None = None,
                   token: str | None = None) -> Path:
    """Snapshot a Hub model repo (safetensors, configs, tokenizer) and return the local folder.

    With ``HF_HUB_OFFLINE=1`` only the local cache is used. ``local_dir`` gets a plain copy of the files;
    without it they stay in the Hugging Face cache.
    """
    if is_local_model(repo_name):
        return check_model_folder(repo_name)
    from aptops.core import hub_client as client  # huggingface_hub only where a Hub is asked

    client.check_repo_id(repo_name, what="model repo")
    hub = require("huggingface_hub", extra="hub", feature="downloading from the Hub")
    with client.translate_errors("downloading", repo_name, token):
        folder = hub.snapshot_download(
            repo_name, revision=revision, local_dir=str(local_dir) if local_dir else None, token=token,
            endpoint=client.endpoint(), allow_patterns=MODEL_PATTERNS, local_files_only=client.offline(),
        )
    return check_model_folder(folder)


def load_text_dataset(dataset: Any, text_column: str) -> Any:
    """A dataset from anything :func:`aptops.lm.datasets.load_hf_dataset` takes, checked for its text column.

    Args:
        dataset: a ``datasets.Dataset`` / ``IterableDataset``, a path or Hub id for ``load_hf_dataset``, or a source
            URI (``s3://bucket/corpus/``, ``hf://datasets/org/name/data/*.parquet``; :mod:`aptops.core.remote`).
        text_column: the column that must hold the text.

    Raises:
        ConfigError: the dataset has no ``text_column``.
    """
    from aptops.core.remote import is_uri

    if is_uri(dataset):
        # s3://, oss://, gs://, hf://datasets/..., https://: read in place file by file (the data stage's reader,
        # its checks and errors), held as Arrow in memory; a corpus larger than memory goes through the data stage
        # first, which streams it into a local dataset artifact
        from aptops.core.sources import read_batches

        datasets = require("datasets", extra="train", feature="reading a dataset")
        pa = require("pyarrow", extra="data", feature="reading a dataset")
        tables = list(read_batches(str(dataset), text_column=text_column))
        dataset = datasets.Dataset(pa.concat_tables(tables, promote_options="default"))
    elif isinstance(dataset, str | Path):
        from aptops.lm.datasets import load_hf_dataset

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
    if is_local_model(model):
        check_model_folder(model)
    else:
        from aptops.core import hub_client as client

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
