"""The backup manifest: path, size and SHA-256 of every file, written last as the commit marker.

A manifest is also a security boundary on restore: absolute paths, ``..`` segments, backslashes and
duplicate entries are refused before any byte is downloaded.

Folders of many small files can travel as one tar archive (``pack_small_files``): the manifest then lists
every packed file with ``"archive"`` naming the tar it is in, and restore extracts exactly those
members — regular files only, each checked against its entry — and nothing else.

An entry may name the ``"object"`` its bytes are stored under when that is not its path: a backup that
changes a file sends it under a content-addressed key (``.aptops-objects/<sha256>``) first, so the objects
the current manifest points at are never overwritten before the new manifest is committed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from aptops.core.errors import ArtifactNotFoundError, InvalidArtifactError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ARCHIVE = ".aptops-small-files.tar"
OBJECTS = ".aptops-objects"  # content-addressed keys of files sent while an older manifest points at their path
VERSION_TAG_PREFIX = "backup-"  # hidden: never collides with a model file, never backed up as one
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    archive: str | None = None  # the tar this file travels in, if it was packed
    object: str | None = None  # where its bytes are stored, when not at its path

    @property
    def key(self) -> str:
        """The object holding this file's bytes, relative to the backup's location."""
        return self.object or self.path


def version_tag(existing: set[str]) -> str:
    """A ``backup-<UTC time>`` tag for a repo backup, suffixed ``.2``, ``.3`` ... if that second is taken."""
    base = f"{VERSION_TAG_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    tag, n = base, 1
    while tag in existing:  # two backups in one second
        n += 1
        tag = f"{base}.{n}"
    return tag


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_model_files(folder: str | Path, *, follow_symlinks: bool = False) -> list[tuple[str, int]]:
    """``(relative path, size)`` of every file to back up (hidden files and an old manifest excluded).

    Symbolic links are skipped with a warning, as rclone and restic do without their follow options: a link
    could carry a file from anywhere on the machine into the backup. ``follow_symlinks`` backs up what a
    link to a file *inside* the folder points at; a link that leaves the folder, or names a folder, is
    skipped either way.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactNotFoundError(f"model folder {str(folder)!r} does not exist", path=str(folder))
    root = folder.resolve()
    files, skipped = [], []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if rel.as_posix() == MANIFEST or any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_symlink():
            target = Path(os.path.realpath(p))  # a loop resolves to a path that is not a file, no error
            if follow_symlinks and target.is_relative_to(root) and target.is_file():
                files.append((rel.as_posix(), target.stat().st_size))
            else:
                skipped.append(rel.as_posix())
            continue
        if p.is_file():
            files.append((rel.as_posix(), p.stat().st_size))
    if skipped:
        log.warning("skipped %d symbolic link(s) (%s%s): %s", len(skipped), ", ".join(skipped[:5]),
                    " ..." if len(skipped) > 5 else "",
                    "they leave the folder or name a folder" if follow_symlinks
                    else "links are not followed; copy the files in, or set follow_symlinks=true for links "
                         "to files inside the folder")
    if not files:
        raise InvalidArtifactError(f"model folder {str(folder)!r} is empty: nothing to back up", path=str(folder))
    return files


def content_key(sha256: str) -> str:
    """The content-addressed object key of a file's bytes."""
    return f"{OBJECTS}/{sha256}"


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
        archive = f.get("archive")
        if archive is not None and (not isinstance(archive, str) or not safe_relative_path(archive)):
            raise InvalidArtifactError(f"{source}: entry {path!r} names an unsafe archive {archive!r}")
        obj = f.get("object")
        if obj is not None and (not isinstance(obj, str) or not safe_relative_path(obj) or archive is not None):
            raise InvalidArtifactError(f"{source}: entry {path!r} names an unsafe object {obj!r}")
        entries.append(FileEntry(path, f["size"], sha, archive, obj))
    stored = {e.path for e in entries if e.archive is None}
    for e in entries:
        if e.archive is not None and e.archive not in stored:
            raise InvalidArtifactError(f"{source}: {e.path!r} is in archive {e.archive!r}, which the manifest does not list")
    folders = {str(parent) for e in entries for parent in PurePosixPath(e.path).parents if str(parent) != "."}
    clash = sorted(folders & seen)
    if clash:
        raise InvalidArtifactError(f"{source}: {clash[0]!r} is listed as a file and as a folder of other entries; "
                                   "refusing to restore")
    return entries


def pack_small_files(folder: Path, files: list[tuple[str, int]], limit_bytes: int,
                     staging: Path) -> tuple[list[tuple[str, int]], list[dict[str, Any]]]:
    """Pack every file under ``limit_bytes`` into one tar in ``staging``; link the others beside it.

    The tar is reproducible (sorted members, zero mtimes and owners), so an unchanged folder gives the
    same archive bytes and the next backup skips it. Returns the files to upload from ``staging`` and the
    manifest entries of the packed files.
    """
    small = [(p, n) for p, n in files if n < limit_bytes]
    if len(small) < 2:
        return files, []
    staging.mkdir(parents=True, exist_ok=True)
    members: list[dict[str, Any]] = []
    with tarfile.open(staging / ARCHIVE, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, _ in small:
            data = (folder / path).read_bytes()
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
            members.append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                            "archive": ARCHIVE})
    large = [(p, n) for p, n in files if n >= limit_bytes]
    for path, _ in large:
        link_or_copy(folder / path, staging / path)
    return [*large, (ARCHIVE, (staging / ARCHIVE).stat().st_size)], members


def link_or_copy(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` as a hard link (no bytes copied), or a copy across filesystems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def extract_members(archive: Path, root: Path, members: list[FileEntry]) -> None:
    """Extract exactly ``members`` from ``archive`` into ``root``, refusing anything else.

    Every tar member must be a regular file listed for this archive, with the listed size; links,
    devices, directories with odd modes and unlisted or missing names are refused. Nothing is extracted
    through ``tarfile``'s own path handling: each member is read and written by this function.
    """
    expected = {m.path: m for m in members}
    seen: set[str] = set()
    with tarfile.open(archive, "r:") as tar:
        for info in tar:
            entry = expected.get(info.name)
            if entry is None or not info.isreg() or info.name in seen:
                raise InvalidArtifactError(f"archive {archive.name} holds {info.name!r} ({'file' if info.isreg() else 'not a file'}), "
                                           "which its manifest does not list; refusing to extract")
            if info.size != entry.size:
                raise InvalidArtifactError(f"archive member {info.name!r} has {info.size} bytes, the manifest says {entry.size}")
            target = root / info.name
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(info)
            assert source is not None  # a regular file always has data
            with target.open("wb") as out:
                shutil.copyfileobj(source, out)
            seen.add(info.name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise InvalidArtifactError(f"archive {archive.name} lacks {len(missing)} listed file(s), e.g. {missing[0]!r}")


def safe_relative_path(path: str) -> bool:
    """A relative POSIX path that stays inside its root."""
    if not path or "\\" in path or "\x00" in path or path.startswith("/") or ":" in path.split("/")[0]:
        return False
    parts = PurePosixPath(path).parts
    return bool(parts) and all(p not in ("", ".", "..") for p in parts)
