"""Corpora where users keep them: ``s3://``, ``oss://``, ``gs://``, ``hf://datasets/...``, ``https://`` read in place.

A source URI names a file, a prefix (a "folder") or a glob (``s3://b/corpus/*.parquet``); :func:`list_remote_files`
lists what it names as :class:`RemoteFile` objects, which the data stage reads like local files, one file at a time
(Parquet a row group at a time), never copying the corpus first. The file systems: pyarrow's ``S3FileSystem`` for
``s3://`` (``AWS_ENDPOINT_URL`` for MinIO / SeaweedFS, credentials from the standard AWS chain, as the backup stage
reads them) and for ``oss://`` (OSS's S3-compatible endpoint, ``OSS_ENDPOINT`` and ``OSS_ACCESS_KEY_*``), pyarrow's
``GcsFileSystem`` for ``gs://``, and fsspec's ``HfFileSystem`` (huggingface_hub; ``HF_TOKEN``) and HTTP file system
for ``hf://`` and ``https://``. A missing bucket, key or permission is an error that names the URI.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from aptops.core.artifacts import IN_PROGRESS_FILE, RESULT_FILE
from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, ConfigError, StorageError

#: The schemes a dataset source may use besides a local path.
SOURCE_SCHEMES = ("s3", "oss", "gs", "hf", "https", "http")
_URI = re.compile(r"^([a-z][a-z0-9+.-]*)://(.+)$")
_SKIP = {"stats.json", "result.json", "config.json", "aptops.json"}


def is_uri(source: Any) -> bool:
    """True for a ``scheme://...`` source this module reads (a local path or ``file://`` is not one)."""
    m = _URI.match(str(source)) if isinstance(source, str) else None
    return bool(m and m.group(1) in SOURCE_SCHEMES)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a remote source: what the readers need of a local ``Path`` (name, suffix, bytes, a stream)."""

    fs: Any  # a pyarrow.fs.FileSystem
    path: str  # the path inside ``fs``
    uri: str  # the file's own URI, for messages

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix

    def __str__(self) -> str:
        return self.uri

    def open(self) -> Any:
        """A seekable pyarrow input file (Parquet reads a row group at a time through it)."""
        return storage_call(self.uri, lambda: self.fs.open_input_file(self.path))

    def read_bytes(self) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path) as stream:
                return stream.read()

        return storage_call(self.uri, read)


def storage_call(uri: str, fn: Any) -> Any:
    """``fn()``, with the store's errors turned into aptops' own that name ``uri`` and what to check."""
    try:
        return fn()
    except FileNotFoundError as exc:
        raise ArtifactNotFoundError(f"{uri} does not exist ({exc}): check the bucket, the key and the prefix",
                                    path=uri) from None
    except (OSError, PermissionError) as exc:  # pyarrow raises OSError with the service's words
        text = str(exc).splitlines()[0][:300]
        hint = ("check the credentials and that they may read it" if re.search(
            r"ACCESS_DENIED|AccessDenied|403|Forbidden|InvalidAccessKeyId|SignatureDoesNotMatch|401", text)
            else "check the URI, the endpoint and the credentials")
        raise StorageError(f"cannot read {uri}: {text}; {hint}", uri=uri) from None


def filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow file system, path inside it)`` for a source URI."""
    m = _URI.match(uri)
    if not m or m.group(1) not in SOURCE_SCHEMES:
        raise ConfigError(f"{uri!r} is not a source URI: use a local path or {', '.join(s + '://' for s in SOURCE_SCHEMES)}",
                          field="source", value=uri)
    scheme, rest = m.group(1), m.group(2)
    pafs = require("pyarrow.fs", extra="data", feature=f"reading {scheme}:// sources")
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        return _s3(pafs, endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"),
                   os.environ.get("AWS_SESSION_TOKEN"), os.environ.get("AWS_DEFAULT_REGION") or os.environ.get(
                       "AWS_REGION")), rest
    if scheme == "oss":
        endpoint = os.environ.get("OSS_ENDPOINT")
        if not endpoint:
            raise ConfigError("oss:// sources need OSS_ENDPOINT (e.g. https://oss-cn-hangzhou.aliyuncs.com)",
                              field="OSS_ENDPOINT")
        return _s3(pafs, endpoint, os.environ.get("OSS_ACCESS_KEY_ID"), os.environ.get("OSS_ACCESS_KEY_SECRET"),
                   None, None, virtual=True), rest
    if scheme == "gs":
        return pafs.GcsFileSystem(), rest
    fsspec_fs: Any
    if scheme == "hf":
        hub = require("huggingface_hub", extra="hub", feature="reading hf:// sources")
        fsspec_fs = hub.HfFileSystem(token=os.environ.get("HF_TOKEN") or None)
    else:
        fsspec_fs = require("fsspec", extra="data", feature=f"reading {scheme}:// sources").filesystem(scheme)
        rest = uri  # the HTTP file system takes whole URLs
    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs)), rest


def _s3(pafs: Any, endpoint: str | None, key: str | None, secret: str | None, token: str | None, region: str | None,
        *, virtual: bool = False) -> Any:
    kwargs: dict[str, Any] = {"region": region or "us-east-1"}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=token)
    if virtual:
        kwargs["force_virtual_addressing"] = True
    return pafs.S3FileSystem(**kwargs)


def list_remote_files(uri: str) -> list[RemoteFile]:
    """The data files a source URI names: itself, everything under it (a prefix, recursively, hidden files and
    aptops' own JSON files skipped), or what its glob (``*``, ``?``, ``[...]`` in the last parts) matches."""
    fs, path = filesystem(uri)
    pafs = require("pyarrow.fs", extra="data", feature="listing remote sources")
    scheme = uri.split("://", 1)[0]

    def own_uri(p: str) -> str:
        return p if scheme in ("http", "https") else f"{scheme}://{p}"

    glob = any(ch in path for ch in "*?[")
    base = path if not glob else path[:min(path.index(ch) for ch in "*?[" if ch in path)].rpartition("/")[0]
    info = storage_call(uri, lambda: fs.get_file_info(base.rstrip("/") or base))
    if not glob and info.type == pafs.FileType.File:
        return [RemoteFile(fs, path, uri)]
    if info.type == pafs.FileType.NotFound and scheme not in ("s3", "oss", "gs"):  # object stores have no folders
        raise ArtifactNotFoundError(f"{uri} does not exist: check the repository, revision and path", path=uri)
    selector = pafs.FileSelector(base.rstrip("/"), recursive=True, allow_not_found=True)
    found = storage_call(uri, lambda: fs.get_file_info(selector))
    top = {e.path[len(base.rstrip("/")):].lstrip("/") for e in found if e.type == pafs.FileType.File}
    if IN_PROGRESS_FILE in top and RESULT_FILE not in top:  # aptops.core.remote_artifacts' unfinished publish
        raise ArtifactNotFoundError(f"{uri} is an unfinished aptops artifact (its publish was stopped or is under "
                                    "way; it has no result.json): rerun the stage that writes it", path=uri)
    files = []
    for entry in sorted(found, key=lambda e: e.path):
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(base.rstrip("/")):].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")) or PurePosixPath(rel).name in _SKIP:
            continue
        if glob and not fnmatch.fnmatchcase(entry.path, path):
            continue
        files.append(RemoteFile(fs, entry.path, own_uri(entry.path)))
    if not files:
        raise ArtifactNotFoundError(f"{uri} names no data files (nothing under that prefix{' matches the glob' if glob else ''}): "
                                    "check the bucket and the prefix", path=uri)
    return files
