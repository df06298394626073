"""Backups on a Hugging Face Hub repo: one commit per backup, a tag per version, LFS for weights.

``hf://org/name[/path]`` backs up into a (private, by default) model repo; ``hf://datasets/org/name``
into a dataset repo. Unlike a bucket, a Hub repo takes a whole backup as **one commit** — the changed
files and ``manifest.json`` together, so a backup is there completely or not at all — and every backup
is also tagged (``backup-20261127T031500Z``), so older versions stay listable (:func:`list_backups`) and
restorable (``hf://org/name@backup-...``). Large files go through the client's LFS path; files whose
content the repo already holds are not sent again.

The token comes from the argument or the client's chain (``HF_TOKEN``, the saved login); the endpoint
from ``HF_ENDPOINT`` (a mirror or a private Hub works the same).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aptops.backup.manifest import MANIFEST, VERSION_TAG_PREFIX, version_tag
from aptops.core.deps import require
from aptops.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class HfStore:
    """One Hub repo (and a folder inside it) as a backup destination or source."""

    repo_id: str
    prefix: str = ""
    revision: str | None = None
    repo_type: str = "model"
    token: str | None = None
    private: bool = True
    provider: str = "hf"

    def __post_init__(self) -> None:
        from aptops.core import hub_client as client

        self._hub = require("huggingface_hub", extra="backup", feature="Hugging Face Hub backup")
        self._errors = require("huggingface_hub.errors", extra="backup", feature="Hugging Face Hub backup")
        self._client = client
        client.check_repo_id(self.repo_id, what="backup repo")
        if self.repo_type not in ("model", "dataset"):
            raise ConfigError(f"backups go to model or dataset repos, not {self.repo_type!r}", field="repo_type")
        self._api = client.api(self.token)

    @property
    def uri(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://{kind}{self.repo_id}{rev}/{self.prefix}".rstrip("/")

    def key(self, path: str) -> str:
        return f"{self.prefix.strip('/')}/{path}" if self.prefix.strip("/") else path

    # --- what every store does ----------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        self._api.create_repo(self.repo_id, repo_type=self.repo_type, private=self.private, exist_ok=True)

    def read(self, path: str) -> bytes | None:
        with tempfile.TemporaryDirectory(prefix="aptops-hf-read-") as tmp:
            try:
                got = self._api.hf_hub_download(self.repo_id, self.key(path), repo_type=self.repo_type,
                                                revision=self.revision, local_dir=tmp)
            except (self._errors.EntryNotFoundError, self._errors.RepositoryNotFoundError,
                    self._errors.RevisionNotFoundError):
                return None
            return Path(got).read_bytes()

    def download(self, path: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".aptops-hf-", dir=local.parent) as tmp:
            got = self._api.hf_hub_download(self.repo_id, self.key(path), repo_type=self.repo_type,
                                            revision=self.revision, local_dir=tmp)
            os.replace(got, local)

    # --- a whole backup as one commit ---------------------------------------------------------------
    def commit_backup(self, folder: Path, files: list[tuple[str, int, str]], manifest: bytes,
                      message: str) -> tuple[int, int, int]:
        """Commit every changed file and ``manifest.json`` at once, then tag the commit.

        Returns ``(files_sent, bytes_sent, files_skipped)``.
        """
        sha_util = require("huggingface_hub.utils.sha", extra="backup", feature="Hugging Face Hub backup")
        tree = self._listing()
        ops, sent, sent_bytes, skipped = [], 0, 0, 0
        for path, size, sha in files:
            remote = tree.get(self.key(path))
            if remote is not None and remote.size == size and (
                    (remote.lfs is not None and remote.lfs.sha256 == sha)
                    or (remote.lfs is None and remote.blob_id == sha_util.git_hash((folder / path).read_bytes()))):
                skipped += 1
                continue
            ops.append(self._hub.CommitOperationAdd(path_in_repo=self.key(path), path_or_fileobj=str(folder / path)))
            sent += 1
            sent_bytes += size
        ops.append(self._hub.CommitOperationAdd(path_in_repo=self.key(MANIFEST), path_or_fileobj=manifest))
        info = self._api.create_commit(self.repo_id, ops, commit_message=message, repo_type=self.repo_type,
                                       revision=self.revision)
        tag = version_tag({t.name for t in self._api.list_repo_refs(self.repo_id, repo_type=self.repo_type).tags})
        self._api.create_tag(self.repo_id, tag=tag, revision=info.oid, repo_type=self.repo_type, tag_message=message)
        log.info("backup committed to %s as %s (tag %s)", self.uri, info.oid[:12], tag)
        return sent, sent_bytes, skipped

    def _listing(self) -> dict[str, Any]:
        """The files the repo holds now (path -> ``RepoFile``); empty for a new repo or branch."""
        try:
            entries = self._api.list_repo_tree(self.repo_id, recursive=True, revision=self.revision,
                                               repo_type=self.repo_type)
            return {e.path: e for e in entries if hasattr(e, "blob_id")}
        except (self._errors.RepositoryNotFoundError, self._errors.RevisionNotFoundError):
            return {}

    # --- errors -------------------------------------------------------------------------------------
    def is_transient(self, exc: BaseException) -> bool:
        code = self._client.status_of(exc)
        if code is not None:
            return code >= 500 or code in (408, 429)
        return isinstance(exc, ConnectionError | TimeoutError) or type(exc).__module__.split(".")[0] in ("httpx2", "httpx")

    def error_code(self, exc: BaseException) -> str | None:
        code = self._client.status_of(exc)
        return str(code) if code is not None else None


def list_backups(location: str, token: str | None = None) -> list[dict[str, str]]:
    """The backup versions (tags) of a Hub backup location, oldest first: ``[{"tag", "commit"}]``."""
    from aptops.core import hub_client as client
    from aptops.core.locations import parse_location

    loc = parse_location(location)
    if loc.scheme != "hf":
        raise ConfigError(f"{location!r} is not an hf:// location; versions are listed for Hub backups only",
                          field="location", value=location)
    with client.translate_errors("listing backups of", loc.bucket, token, repo_type=loc.repo_type or "model"):
        refs = client.api(token).list_repo_refs(loc.bucket, repo_type=loc.repo_type or "model")
    tags = [{"tag": t.name, "commit": t.target_commit} for t in refs.tags if t.name.startswith(VERSION_TAG_PREFIX)]
    return sorted(tags, key=lambda t: t["tag"])
