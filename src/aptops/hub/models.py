"""Import models from, and publish them to, a Hugging Face Hub.

Try it against the public Hub (or a mirror through ``HF_ENDPOINT``)::

    aptops hub import HuggingFaceTB/SmolLM2-135M-Instruct --out runs/smollm2
    aptops hub export runs/train my-org/my-model --private

Only safetensors weights are downloaded and loaded: pickled ``*.bin`` checkpoints can run code when
loaded, and remote code is never trusted unless the caller asks for it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core import hub_client as client
from aptops.core.artifacts import (
    LINEAGE_FILE,
    RESULT_FILE,
    StageResult,
    atomic_output,
    finish_artifact,
    write_lineage,
)
from aptops.core.deps import require
from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.hub.card import create_model_card
from aptops.lm.loading import PICKLED_SUFFIXES, check_model_folder, download_model, is_local_model

log = logging.getLogger(__name__)



@dataclass(frozen=True, kw_only=True)
class FetchConfig:
    """How :func:`fetch_model` brings a model in.

    Attributes:
        revision: a branch, tag or commit of a Hub repo (``None``: the default branch).
        trust_remote_code: keep the repo's own modelling code (``*.py`` files and the ``auto_map`` entries that
            point at them). Off: they are dropped, so no later tool that trusts remote code can run them.
    """

    revision: str | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True, kw_only=True)
class PublishConfig:
    """How :func:`publish_model` publishes.

    Attributes:
        private: create the repo private (an existing repo keeps its visibility); on by default, since a model
            made public by mistake cannot be taken back from whoever downloaded it.
        commit_message: default ``"Upload <name> with aptops"``.
        revision_tag: also tag the new commit (e.g. ``v1``), so this version can be fetched later.
        model_info: card fields only a person knows (license, language, datasets ...).
        exist_ok: publish into an existing repo instead of failing.
    """

    private: bool = True
    commit_message: str | None = None
    revision_tag: str | None = None
    model_info: dict[str, Any] = field(default_factory=dict)
    exist_ok: bool = True

    def __post_init__(self) -> None:
        if self.revision_tag is not None and not self.revision_tag.strip():
            raise ConfigError("revision_tag is empty; give a tag name such as v1 or leave it out", field="revision_tag")


def _copy_model_files(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy the plain files of a model folder (a Hugging Face cache snapshot's links are followed): no
    sub-folders, hidden files, pickled weights or ``skip``."""
    for item in source.iterdir():
        if item.is_file() and not item.name.startswith(".") \
                and item.name not in (RESULT_FILE, *skip) and item.suffix not in PICKLED_SUFFIXES:
            shutil.copy2(item, target / item.name)


def _file_metrics(folder: Path) -> dict[str, float]:
    """How many files a model folder holds and their bytes: what a hub step reports moving."""
    files = [p for p in folder.iterdir() if p.is_file()]
    return {"files": float(len(files)), "bytes": float(sum(p.stat().st_size for p in files))}


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


def publish_model(model: Any, *, repo: str, config: PublishConfig | None = None, tokenizer: Any = None,
                  token: str | None = None) -> StageResult:
    """Publish a model, its tokenizer and a generated model card to a Hub repo.

    The repo is created if missing; weights go up as safetensors through the client's LFS path; ``README.md``
    is the card from :func:`create_model_card`, filled from the folder's lineage. Nothing is written locally.

    Args:
        model: a model folder or a ``PreTrainedModel``.
        repo: ``org/name``.
        config: visibility, commit message, tag, card fields (see :class:`PublishConfig`).
        tokenizer: a tokenizer or a folder holding one; ``None``: the model folder's own files.
        token: a Hub token with write access; default ``HF_TOKEN`` or the saved login.

    Returns:
        The result: ``outputs["commit"]`` the commit URL; metrics the files and bytes published.
    """
    config = config or PublishConfig()
    client.check_repo_id(repo, what="model repo")
    api = client.api(token)
    with tempfile.TemporaryDirectory(prefix="aptops-export-") as tmp:
        staged = Path(tmp)
        _stage_folder(model, tokenizer, staged)
        check_model_folder(staged)
        create_model_card(staged, repo, config.model_info)
        metrics = _file_metrics(staged)
        message = config.commit_message or f"Upload {repo.split('/')[-1]} with aptops"
        with client.translate_errors("publishing", repo, token):
            api.create_repo(repo, private=config.private, exist_ok=config.exist_ok, repo_type="model")
            info = api.upload_folder(repo_id=repo, folder_path=str(staged), commit_message=message,
                                     repo_type="model")
            if config.revision_tag:
                api.create_tag(repo, tag=config.revision_tag, revision=info.oid, tag_message=message)
    log.info("published %s at %s", repo, info.commit_url)
    return StageResult("hub", outputs={"commit": str(info.commit_url)}, metrics=metrics,
                       details={"repo": repo, "commit": info.oid, "tag": config.revision_tag})


def fetch_model(repo: str | Path, *, output_dir: str | Path, config: FetchConfig | None = None,
                token: str | None = None) -> StageResult:
    """Bring a Hub model (or a local model folder) into ``output_dir`` as a complete aptops model artifact.

    The files land in a temporary folder that replaces ``output_dir`` only once the snapshot is complete
    and loadable; ``aptops.json`` records where it came from (``hf://repo@commit``), which the model card
    of every descendant names as its base model. Remote code (``*.py``, ``auto_map``) is dropped unless
    ``config.trust_remote_code``; the result says what was dropped.
    """
    config = config or FetchConfig()
    hub = require("huggingface_hub", extra="hub", feature="downloading from the Hub")
    local = is_local_model(repo)
    if not local:
        client.check_repo_id(str(repo), what="model repo")
    with atomic_output(output_dir) as tmp:
        if local:
            source = check_model_folder(repo)
            _copy_model_files(source, tmp)
            commit, origin, settings = "local", str(source), {}
        else:
            download_model(str(repo), tmp, revision=config.revision, token=token)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)
            commit = config.revision
            if not client.offline():
                with client.translate_errors("resolving", str(repo), token):
                    commit = client.api(token).model_info(str(repo), revision=config.revision).sha
            origin = f"hf://{repo}@{commit or 'main'}"
            settings = {"revision": config.revision, "endpoint": client.endpoint(), "huggingface_hub": hub.__version__}
        settings["trust_remote_code"] = config.trust_remote_code
        dropped = [] if config.trust_remote_code else drop_remote_code(tmp)
        if dropped:
            log.warning("dropped the model's own code (%s): aptops loads it with the transformers classes; pass "
                        "trust_remote_code=true to keep it", ", ".join(dropped))
        metrics = _file_metrics(tmp) | {"remote_code_dropped": float(len(dropped))}
        if not (local and (tmp / LINEAGE_FILE).exists()):  # a local aptops folder keeps its own history
            write_lineage(tmp, stage="hub", inputs={"model": origin}, config=settings, metrics=metrics)
        result = StageResult("hub", outputs={"model": str(output_dir)}, metrics=metrics,
                             details={"repo": origin if local else str(repo), "commit": commit,
                                      "remote_code_dropped": dropped})
        finish_artifact(tmp, result)  # no stage config.json: a model folder's config.json is the model's
    return result


def drop_remote_code(folder: Path) -> list[str]:
    """Remove a model folder's own code: ``*.py`` files and the ``auto_map`` entries of its JSON configs that
    point at them. Returns what was dropped (file names and ``<file>:auto_map``)."""
    dropped = []
    for item in sorted(folder.iterdir()):
        if item.is_file() and item.suffix == ".py":
            item.unlink()
            dropped.append(item.name)
    for name in ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                 "generation_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidArtifactError(f"{name} of the model is not valid JSON: {exc}", path=str(path)) from None
        if isinstance(data, dict) and "auto_map" in data:
            del data["auto_map"]
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            dropped.append(f"{name}:auto_map")
    return dropped
