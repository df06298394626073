"""Backups on a ModelScope repo through the ``modelscope`` client's hub API.

``modelscope://org/name[@revision][/path]`` backs up into a private model repo (created if missing).
Changed files go up with the client's ``upload_folder`` (its LFS batch + commit API, large files as LFS
blobs), then ``manifest.json`` in a commit of its own — the manifest is always the last thing written, so
a backup without it is visibly incomplete — and the commit is tagged ``backup-<UTC time>`` so every
version can be restored (``modelscope://org/name@backup-.../path``). ModelScope lists a SHA-256 for
every file, so unchanged files are recognised without downloading them.

The token comes from the argument or ``MODELSCOPE_API_TOKEN``; the endpoint from ``MODELSCOPE_ENDPOINT``
(default www.modelscope.cn).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aptops.backup.manifest import MANIFEST, link_or_copy, version_tag
from aptops.core.deps import require
from aptops.core.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_ENDPOINT = "https://www.modelscope.cn"


@dataclass
class ModelScopeStore:
    """One ModelScope repo (and a folder inside it) as a backup destination or source."""

    repo_id: str
    prefix: str = ""
    revision: str | None = None
    token: str | None = None
    endpoint: str | None = None
    provider: str = "modelscope"

    def __post_init__(self) -> None:
        api_mod = require("modelscope_hub.api", extra="backup", feature="ModelScope backup")
        self._errors = require("modelscope_hub.errors", extra="backup", feature="ModelScope backup")
        token = self.token or os.environ.get("MODELSCOPE_API_TOKEN")
        if not token:
            raise ConfigError("ModelScope needs a token: set MODELSCOPE_API_TOKEN (an access token from your "
                              "ModelScope account settings)", field="MODELSCOPE_API_TOKEN")
        endpoint = (self.endpoint or os.environ.get("MODELSCOPE_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self._api = api_mod.HubApi(token=token, endpoint=endpoint)

    @property
    def uri(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"modelscope://{self.repo_id}{rev}/{self.prefix}".rstrip("/")

    def key(self, path: str) -> str:
        return f"{self.prefix.strip('/')}/{path}" if self.prefix.strip("/") else path

    @property
    def _rev(self) -> str:
        return self.revision or "master"

    # --- what every store does ----------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        try:
            self._api.create_repo(self.repo_id, "model", visibility="private")
            log.info("created private ModelScope repo %s", self.repo_id)
        except self._errors.AlreadyExistsError:
            pass

    def read(self, path: str) -> bytes | None:
        with tempfile.TemporaryDirectory(prefix="aptops-ms-read-") as tmp:
            try:
                got = self._api.download_file(self.repo_id, "model", self.key(path), revision=self._rev,
                                              local_dir=tmp, force=True)
            except self._errors.NotExistError:
                return None
            return Path(got).read_bytes()

    def download(self, path: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".aptops-ms-", dir=local.parent) as tmp:
            got = self._api.download_file(self.repo_id, "model", self.key(path), revision=self._rev,
                                          local_dir=tmp, force=True)
            os.replace(got, local)

    def write(self, path: str, data: bytes) -> None:
        self._api.upload_file(repo_id=self.repo_id, repo_type="model", path_or_fileobj=data,
                              path_in_repo=self.key(path), commit_message=f"aptops: write {path}",
                              revision=self._rev)

    # --- a whole backup -----------------------------------------------------------------------------
    def commit_backup(self, folder: Path, files: list[tuple[str, int, str]], manifest: bytes,
                      message: str) -> tuple[int, int, int]:
        """Upload the changed files, then the manifest (last), then tag the version.

        Returns ``(files_sent, bytes_sent, files_skipped)``.
        """
        remote = self._files()
        changed = [(p, n) for p, n, sha in files
                   if not (self.key(p) in remote and remote[self.key(p)].sha256 == sha and remote[self.key(p)].size == n)]
        if changed:
            with tempfile.TemporaryDirectory(prefix="aptops-ms-stage-") as tmp:
                for path, _ in changed:  # a folder of exactly the changed files (hard links, no copies)
                    link_or_copy(folder / path, Path(tmp) / path)
                self._api.upload_folder(self.repo_id, "model", tmp, path_in_repo=self.prefix.strip("/"),
                                        commit_message=message, revision=self._rev, use_cache=False,
                                        disable_tqdm=True)
        self.write(MANIFEST, manifest)  # last: its presence marks the backup complete
        tag = version_tag({r.get("Revision") for r in self._api.list_repo_revisions(self.repo_id, "model")})
        self._api.create_repo_tag(self.repo_id, "model", tag, revision=self._rev)
        log.info("backup committed to %s (tag %s)", self.uri, tag)
        return len(changed), sum(n for _, n in changed), len(files) - len(changed)

    def _files(self) -> dict[str, Any]:
        """The files the repo holds now (path -> ``FileInfo`` with size and sha256); empty for a new repo."""
        try:
            return {e.path: e for e in self._api.list_repo_files(self.repo_id, "model", revision=self._rev)}
        except self._errors.NotExistError:
            return {}

    # --- errors -------------------------------------------------------------------------------------
    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, self._errors.NetworkError | self._errors.RateLimitError | self._errors.ServerError):
            return True
        code = getattr(exc, "status_code", None)
        return code is not None and (code >= 500 or code in (408, 429))

    def error_code(self, exc: BaseException) -> str | None:
        code = getattr(exc, "status_code", None)
        return str(code) if code is not None else None
