"""The backup manifest: path, size and SHA-256 of every file, written last as the commit marker.

A manifest is also a security boundary on restore: absolute paths, ``..`` segments, backslashes and
duplicate entries are refused before any byte is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from aptops.core.errors import ArtifactNotFoundError, InvalidArtifactError

MANIFEST = "manifest.json"
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_model_files(folder: str | Path) -> list[tuple[str, int]]:
    """``(relative path, size)`` of every file to back up (hidden files and an old manifest excluded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactNotFoundError(f"model folder {str(folder)!r} does not exist", path=str(folder))
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or rel.as_posix() == MANIFEST or any(part.startswith(".") for part in rel.parts):
            continue
        files.append((rel.as_posix(), p.stat().st_size))
    if not files:
        raise InvalidArtifactError(f"model folder {str(folder)!r} is empty: nothing to back up", path=str(folder))
    return files


def manifest_of(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": 1, "created_at": time.time(), "total_bytes": sum(f["size"] for f in entries), "files": entries}


def build_manifest(folder: str | Path) -> dict[str, Any]:
    """Hash every file under ``folder`` (hidden temp files and an old manifest excluded)."""
    folder = Path(folder)
    return manifest_of([{"path": rel, "size": size, "sha256": sha256_file(folder / rel)}
                        for rel, size in list_model_files(folder)])


def parse_manifest(data: bytes | str, *, source: str = "manifest") -> list[FileEntry]:
    """Validate a manifest and return its entries.

    Raises:
        InvalidArtifactError: not JSON, wrong shape, or an unsafe path.
    """
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArtifactError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise InvalidArtifactError(f"{source} has no 'files' list")
    entries, seen = [], set()
    for i, f in enumerate(doc["files"]):
        if not isinstance(f, dict) or not {"path", "size", "sha256"} <= set(f):
            raise InvalidArtifactError(f"{source}: entry {i} needs path, size and sha256")
        path = f["path"]
        if not isinstance(path, str) or not safe_relative_path(path):
            raise InvalidArtifactError(f"{source}: entry {i} has an unsafe path {path!r}; refusing to restore")
        if path in seen:
            raise InvalidArtifactError(f"{source}: {path!r} is listed twice")
        seen.add(path)
        sha = str(f["sha256"])
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise InvalidArtifactError(f"{source}: entry {path!r} has no valid sha256")
        if not isinstance(f["size"], int) or f["size"] < 0:
            raise InvalidArtifactError(f"{source}: entry {path!r} has an invalid size")
        entries.append(FileEntry(path, f["size"], sha))
    return entries


def safe_relative_path(path: str) -> bool:
    """A relative POSIX path that stays inside its root."""
    if not path or "\\" in path or "\x00" in path or path.startswith("/") or ":" in path.split("/")[0]:
        return False
    parts = PurePosixPath(path).parts
    return bool(parts) and all(p not in ("", ".", "..") for p in parts)
