"""Import models from, and publish them to, a Hugging Face Hub.

Try it against the public Hub (or a mirror through ``HF_ENDPOINT``)::

    aptops hub import HuggingFaceTB/SmolLM2-135M-Instruct --out runs/smollm2
    aptops hub export runs/train my-org/my-model --private

Only safetensors weights are downloaded and loaded: pickled ``*.bin`` checkpoints can run code when
loaded, and remote code is never trusted unless the caller asks for it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aptops.core.artifacts import (
    LINEAGE_FILE,
    RESULT_FILE,
    StageResult,
    atomic_output,
    finish_artifact,
    write_lineage,
)
from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, ConfigError, InvalidArtifactError
from aptops.hub import client
from aptops.hub.card import create_model_card

log = logging.getLogger(__name__)

PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # weights that run code when loaded: never copied
# What a model snapshot needs; pickled and framework-foreign weights are left on the Hub.
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "README.md"]


def _is_local(name: str | Path) -> bool:
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
    return path


def download_model(repo_name: str, local_dir: str | Path | None = None, *, revision: str | None = None,
                   token: str | None = None) -> Path:
    """Snapshot a Hub model repo (safetensors, configs, tokenizer) and return the local folder.

    With ``HF_HUB_OFFLINE=1`` only the local cache is used. ``local_dir`` gets a plain copy of the files;
    without it they stay in the Hugging Face cache.
    """
    if _is_local(repo_name):
        return check_model_folder(repo_name)
    client.check_repo_id(repo_name, what="model repo")
    hub = require("huggingface_hub", extra="hub", feature="downloading from the Hub")
    with client.translate_errors("downloading", repo_name, token):
        folder = hub.snapshot_download(
            repo_name, revision=revision, local_dir=str(local_dir) if local_dir else None, token=token,
            endpoint=client.endpoint(), allow_patterns=MODEL_PATTERNS, local_files_only=client.offline(),
        )
    return check_model_folder(folder)


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


def _copy_model_files(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy the plain files of a model folder: no sub-folders, hidden files, pickled weights or ``skip``."""
    for item in source.iterdir():
        if item.is_file() and not item.name.startswith(".") and item.name not in (RESULT_FILE, *skip) \
                and item.suffix not in PICKLED_SUFFIXES:
            shutil.copy2(item, target / item.name)


def _stage_folder(model: Any, tokenizer: Any, target: Path) -> None:
    """Write ``model`` and ``tokenizer`` (objects or a folder path) into ``target`` as safetensors."""
    if isinstance(model, str | Path):
        _copy_model_files(check_model_folder(model), target, skip=("README.md",))  # the card is written anew
    else:
        model.save_pretrained(target)
        lineage = getattr(getattr(model, "config", None), "_name_or_path", None)
        if lineage and (Path(lineage) / LINEAGE_FILE).is_file():
            shutil.copy2(Path(lineage) / LINEAGE_FILE, target / LINEAGE_FILE)
    if tokenizer is not None and not isinstance(tokenizer, str | Path):
        tokenizer.save_pretrained(target)
    elif tokenizer is not None:
        for item in Path(tokenizer).iterdir():
            if item.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
                shutil.copy2(item, target / item.name)


def export_to_huggingface(model: Any, tokenizer: Any, repo_name: str, *, private: bool = False,
                          commit_message: str | None = None, token: str | None = None,
                          model_info: Mapping[str, Any] | None = None, revision_tag: str | None = None,
                          exist_ok: bool = True) -> str:
    """Publish a model, its tokenizer and a generated model card to a Hub repo.

    The repo is created (public or private) if missing; weights go up as safetensors through the client's
    LFS path; ``README.md`` is the card from :func:`create_model_card`, filled from the folder's lineage.

    Args:
        model: a ``PreTrainedModel`` or a model folder.
        tokenizer: a tokenizer, a folder holding one, or ``None`` (the folder's own files are used).
        repo_name: ``org/name``.
        private: create the repo private.
        commit_message: default ``"Upload <name> with aptops"``.
        token: a Hub token with write access; default ``HF_TOKEN`` or the saved login.
        model_info: card fields only a person knows (license, language, datasets ...).
        revision_tag: also tag the new commit (e.g. ``v1``), so this version can be fetched later.
        exist_ok: publish into an existing repo instead of failing.

    Returns:
        The URL of the commit.
    """
    client.check_repo_id(repo_name, what="model repo")
    if revision_tag is not None and not revision_tag.strip():
        raise ConfigError("revision_tag is empty; give a tag name such as v1 or leave it out", field="revision_tag")
    api = client.api(token)
    with tempfile.TemporaryDirectory(prefix="aptops-export-") as tmp:
        staged = Path(tmp)
        _stage_folder(model, tokenizer, staged)
        check_model_folder(staged)
        create_model_card(staged, repo_name, model_info)
        message = commit_message or f"Upload {repo_name.split('/')[-1]} with aptops"
        with client.translate_errors("publishing", repo_name, token):
            api.create_repo(repo_name, private=private, exist_ok=exist_ok, repo_type="model")
            info = api.upload_folder(repo_id=repo_name, folder_path=str(staged), commit_message=message,
                                     repo_type="model")
            if revision_tag:
                api.create_tag(repo_name, tag=revision_tag, revision=info.oid, tag_message=message)
    log.info("published %s at %s", repo_name, info.commit_url)
    return str(info.commit_url)


def fetch_model(repo_name: str, output_dir: str | Path, *, revision: str | None = None,
                token: str | None = None) -> StageResult:
    """Download a Hub model into ``output_dir`` as a complete aptops model artifact.

    The files land in a temporary folder that replaces ``output_dir`` only once the snapshot is complete
    and loadable; ``aptops.json`` records where it came from (``hf://repo@commit``), which the model card
    of every descendant names as its base model.
    """
    hub = require("huggingface_hub", extra="hub", feature="downloading from the Hub")
    local = _is_local(repo_name)
    if not local:
        client.check_repo_id(repo_name, what="model repo")
    with atomic_output(output_dir) as tmp:
        if local:
            source = check_model_folder(repo_name)
            _copy_model_files(source, tmp)
            commit, origin, config = "local", str(source), {}
        else:
            download_model(repo_name, tmp, revision=revision, token=token)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)
            commit = revision
            if not client.offline():
                with client.translate_errors("resolving", repo_name, token):
                    commit = client.api(token).model_info(repo_name, revision=revision).sha
            origin = f"hf://{repo_name}@{commit or 'main'}"
            config = {"revision": revision, "endpoint": client.endpoint(), "huggingface_hub": hub.__version__}
        files = [p for p in tmp.iterdir() if p.is_file()]
        metrics = {"files": float(len(files)), "bytes": float(sum(p.stat().st_size for p in files))}
        if not (local and (tmp / LINEAGE_FILE).exists()):  # a local aptops folder keeps its own history
            write_lineage(tmp, stage="hub", inputs={"model": origin}, config=config, metrics=metrics)
        result = StageResult("hub", outputs={"model": str(output_dir)}, metrics=metrics,
                             details={"repo": origin if local else repo_name, "commit": commit})
        finish_artifact(tmp, result)
    return result
