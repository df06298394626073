"""aptops artifacts kept in object storage: ``--out s3://bucket/prefix/`` and an artifact URI as a stage's input.

An artifact at a URI obeys the same rule as a local one: it is complete exactly when its ``result.json`` is there.
:func:`publish_artifact` uploads a finished local artifact so that a reader can never take a half-written one as
complete: it first writes an unfinished marker (``.aptops-in-progress.json``) and removes an older ``result.json``,
then uploads every other file, checks each object's size against the local file, removes objects the new artifact
no longer has, writes ``result.json`` last and only then drops the marker. A process killed at any point leaves a
prefix without ``result.json``, which every reader refuses as incomplete and a rerun of the same stage replaces.

:func:`staged_output` is how a stage writes to a URI: the stage writes its local artifact as always (atomically,
into a staging folder, ``APTOPS_STAGING_DIR`` or the system's temporary folder) and the block's end publishes it.
:func:`staged_input` is how a stage reads an artifact at a URI: its ``result.json`` must be there, and its files are
fetched into a staging folder for the block (disk holds one copy while the step runs; memory stays flat). Corpora
that are not artifacts are not fetched: :mod:`aptops.core.sources` streams them in place.

Writable schemes: ``s3://`` (``AWS_ENDPOINT_URL`` for MinIO / SeaweedFS), ``oss://`` and ``gs://``, through the file
systems :mod:`aptops.core.remote` reads with. The Hub is a publishing target, not a folder (``aptops hub publish``,
``aptops backup``). Object stores have no locks: two processes publishing the same prefix at once is the user's
mistake to avoid, as with ``aws s3 sync``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from aptops.core.artifacts import (
    IN_PROGRESS_FILE,
    RESULT_FILE,
    is_complete,
    refuse_unless_replaceable,
    write_json,
)
from aptops.core.deps import require
from aptops.core.errors import (
    ArtifactNotFoundError,
    ConfigError,
    InvalidArtifactError,
    OutputExistsError,
    StorageError,
)
from aptops.core.logging import progress
from aptops.core.remote import filesystem, is_uri, storage_call

log = logging.getLogger(__name__)

#: The schemes an artifact may be written to.
OUTPUT_SCHEMES = ("s3", "oss", "gs")
_CHUNK = 8 << 20


class Location(str):
    """An output location as the user gave it (a local path or a URI) that joins like a ``Path`` for messages:
    ``Location("s3://b/run") / "report.html"`` is ``s3://b/run/report.html``."""

    def __truediv__(self, other: str) -> Location:
        return Location(f"{self.rstrip('/')}/{other}")

    @property
    def name(self) -> str:
        return self.rstrip("/").rpartition("/")[2]


def _folder(uri: str, *, writing: bool) -> tuple[Any, str]:
    """``(pyarrow file system, prefix path without a trailing slash)`` of an artifact URI."""
    scheme = uri.split("://", 1)[0]
    if writing and scheme not in OUTPUT_SCHEMES:
        raise ConfigError(f"{uri!r}: artifacts are written to a local folder or to "
                          f"{', '.join(s + '://' for s in OUTPUT_SCHEMES)}; publish to the Hub with "
                          "'aptops hub publish' or 'aptops backup'", field="out", value=uri)
    fs, path = filesystem(uri)
    path = path.rstrip("/")
    if not path or (scheme in OUTPUT_SCHEMES and "/" not in path and writing):
        raise ConfigError(f"{uri!r} names a whole bucket: give a prefix inside it (s3://bucket/runs/clean)",
                          field="out", value=uri)
    return fs, path


def remote_files(uri: str) -> dict[str, int]:
    """Every object under the artifact prefix ``uri``, as ``{path relative to it: size}`` (empty when none)."""
    fs, base = _folder(uri, writing=False)
    pafs = require("pyarrow.fs", extra="data", feature="artifacts in object storage")
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    found = storage_call(uri, lambda: fs.get_file_info(selector))
    return {e.path[len(base):].lstrip("/"): int(e.size or 0) for e in found if e.type == pafs.FileType.File}


def _read_marker(fs: Any, path: str, uri: str) -> str | None:
    """The stage a remote marker names (``""`` when none), ``None`` when it is absent or unreadable."""
    try:
        with fs.open_input_stream(path) as stream:
            data = json.loads(stream.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("stage") or "") if isinstance(data, dict) else None


def check_remote_output(uri: str, *, overwrite: bool = False, kind: str | None = None,
                        inputs: Iterable[str | Path] = ()) -> str:
    """Refuse a URI output that would destroy what aptops did not make, as :func:`~aptops.core.artifacts.check_output`
    does for a folder: allowed are an empty prefix, an unfinished artifact of ``kind`` (a killed publish), and with
    ``overwrite`` a complete artifact of ``kind``. The bucket must exist; the output may not be, hold or lie in an
    input URI. Returns ``uri``.

    Raises:
        ConfigError: not a writable URI. StorageError: the bucket is missing or unreadable.
        OutputExistsError: the prefix holds anything else.
    """
    fs, base = _folder(uri, writing=True)
    here = base + "/"
    for item in inputs:
        text = str(item)
        if not is_uri(text):
            continue
        other = _folder(text, writing=False)[1] + "/"
        if text.split("://", 1)[0] == uri.split("://", 1)[0] and (here.startswith(other) or other.startswith(here)):
            raise OutputExistsError(f"output {uri!r} overlaps the input {text!r}: writing it would destroy what the "
                                    "run reads; choose an --out outside every input", path=uri)
    pafs = require("pyarrow.fs", extra="data", feature="artifacts in object storage")
    bucket = base.split("/", 1)[0]
    if storage_call(uri, lambda: fs.get_file_info(bucket)).type == pafs.FileType.NotFound:
        raise StorageError(f"cannot write {uri}: the bucket {bucket!r} does not exist; create it first "
                           "(aptops does not create buckets)", uri=uri)
    files = remote_files(uri)
    if not files:
        return uri
    existing = _read_marker(fs, f"{base}/{RESULT_FILE}", uri) if RESULT_FILE in files else None
    if existing is None and IN_PROGRESS_FILE in files:
        unfinished = _read_marker(fs, f"{base}/{IN_PROGRESS_FILE}", uri)
        if unfinished is not None and (kind is None or unfinished == kind):
            return uri  # aptops' own unfinished publish: replaced
    refuse_unless_replaceable(uri, sorted(files), existing, kind=kind, overwrite=overwrite, place="prefix",
                              things="objects")
    return uri


def _put(fs: Any, source: Path | bytes, path: str, uri: str) -> None:
    """Write a local file (streamed) or ``bytes`` to ``path`` in ``fs``."""
    def write() -> None:
        with fs.open_output_stream(path) as dst:
            if isinstance(source, bytes):
                dst.write(source)
                return
            with source.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)

    storage_call(uri, write)


def publish_artifact(local: str | Path, uri: str, *, overwrite: bool = False,
                     on_file: Any = None) -> dict[str, int]:
    """Upload the complete local artifact ``local`` to ``uri``, ``result.json`` last (see the module's words).

    Args:
        local: a complete aptops artifact folder.
        uri: the destination prefix (``s3://bucket/runs/clean``), checked by :func:`check_remote_output`.
        overwrite: replace a complete artifact of the same kind there.
        on_file: called with each relative path once it is uploaded (progress).

    Returns:
        ``{relative path: bytes}`` of what was published.

    Raises:
        InvalidArtifactError: ``local`` is not complete. OutputExistsError: see :func:`check_remote_output`.
        StorageError: an upload failed or an object's size differs from its file (the artifact stays incomplete).
    """
    local = Path(local)
    if not is_complete(local):
        raise InvalidArtifactError(f"{str(local)!r} is not a complete aptops artifact: nothing was published",
                                   path=str(local))
    kind = json.loads((local / RESULT_FILE).read_text(encoding="utf-8")).get("stage") or None
    check_remote_output(uri, overwrite=overwrite, kind=kind)
    fs, base = _folder(uri, writing=True)
    before = remote_files(uri)
    files = {p.relative_to(local).as_posix(): p for p in sorted(local.rglob("*"))
             if p.is_file() and p.name != IN_PROGRESS_FILE}
    marker = json.dumps({"stage": kind, "pid": os.getpid(), "from": str(local)}).encode("utf-8")
    _put(fs, marker, f"{base}/{IN_PROGRESS_FILE}", uri)
    if RESULT_FILE in before:  # from here on the prefix reads as unfinished until the new result.json lands
        storage_call(uri, lambda: fs.delete_file(f"{base}/{RESULT_FILE}"))
    total = sum(p.stat().st_size for p in files.values())
    log.info("publishing %d files (%.1f MB) to %s", len(files), total / 1e6, uri)
    body = [name for name in files if name != RESULT_FILE]
    for name in progress(body, desc=f"uploading to {uri}", unit="file", total=len(body)):
        _put(fs, files[name], f"{base}/{name}", uri)
        if on_file is not None:
            on_file(name)
    after = remote_files(uri)
    wrong = [n for n in body if after.get(n) != files[n].stat().st_size]
    if wrong:
        raise StorageError(f"published {uri} but {len(wrong)} objects differ from their files in size "
                           f"({', '.join(wrong[:3])}): the artifact is left unfinished; publish it again", uri=uri)
    for name in sorted(set(before) - set(files) - {IN_PROGRESS_FILE}):
        storage_call(uri, lambda name=name: fs.delete_file(f"{base}/{name}"))
    _put(fs, files[RESULT_FILE], f"{base}/{RESULT_FILE}", uri)
    storage_call(uri, lambda: fs.delete_file(f"{base}/{IN_PROGRESS_FILE}"))
    log.info("published %s (%d files)", uri, len(files))
    return {name: p.stat().st_size for name, p in files.items()}


def fetch_artifact(uri: str, dest: str | Path, *, what: str = "artifact") -> Path:
    """Download the complete aptops artifact at ``uri`` into the new folder ``dest``; each file's size is checked.

    Raises:
        ArtifactNotFoundError: nothing is there, or it has no ``result.json`` (unfinished: a publish was killed or is
            under way), naming the URI.
    """
    files = remote_files(uri)
    if not files:
        raise ArtifactNotFoundError(f"{what} {uri} does not exist (no objects under that prefix): check the bucket "
                                    "and the prefix", path=uri)
    if RESULT_FILE not in files:
        state = ("an unfinished aptops artifact (its publish was stopped or is under way)" if IN_PROGRESS_FILE in files
                 else "not an aptops artifact (a raw corpus is read by 'aptops data clean')")
        raise ArtifactNotFoundError(f"{what} {uri} has no {RESULT_FILE}: it is {state}; rerun the stage that writes "
                                    "it", path=uri)
    fs, base = _folder(uri, writing=False)
    dest = Path(dest)
    for name in progress(sorted(files), desc=f"fetching {uri}", unit="file", total=len(files)):
        if name == IN_PROGRESS_FILE:
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)

        def get(name: str = name, target: Path = target) -> None:
            with fs.open_input_stream(f"{base}/{name}") as src, target.open("wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)

        storage_call(f"{uri.rstrip('/')}/{name}", get)
        if target.stat().st_size != files[name]:
            raise StorageError(f"fetched {uri.rstrip('/')}/{name} is {target.stat().st_size} bytes, the store says "
                               f"{files[name]}: it changed while being read; try again", uri=uri)
    return dest


def _staging(name: str) -> Path:
    root = os.environ.get("APTOPS_STAGING_DIR") or None
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"aptops-{name}-", dir=root))


@contextlib.contextmanager
def staged_input(uri: str, *, what: str = "artifact") -> Iterator[Path]:
    """The complete artifact at ``uri`` as a local folder for the block (removed afterwards)."""
    root = _staging("in")
    try:
        yield fetch_artifact(uri, root / (Location(uri).name or "artifact"), what=what)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def staged_output(uri: str, *, overwrite: bool = False, kind: str | None = None,
                  inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """A local folder path for a stage to write its artifact to; when the block ends without an error, the artifact
    there is published to ``uri`` (and the local copy removed either way). ``uri`` is checked before the block runs,
    so a refused output costs no work."""
    check_remote_output(uri, overwrite=overwrite, kind=kind, inputs=inputs)
    root = _staging("out")
    try:
        local = root / (Location(uri).name or "artifact")
        yield local
        if not is_complete(local):
            raise InvalidArtifactError(f"the stage wrote no complete artifact for {uri}: nothing was published",
                                       path=uri)
        _point_outputs_at(local, uri)
        publish_artifact(local, uri, overwrite=overwrite)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def published_path(value: Any, local: str | Path, uri: str) -> Any:
    """``value`` with the staging folder ``local`` at its start replaced by the URI the artifact is published to
    (any other value as it is)."""
    text, local = str(value), str(local)
    return uri.rstrip("/") + text[len(local):] if text == local or text.startswith(local + "/") else value


def _point_outputs_at(folder: Path, uri: str) -> None:
    """Rewrite the paths a ``result.json`` names under the staging folder to where the artifact is published."""
    path = folder / RESULT_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    data["outputs"] = {k: published_path(v, folder, uri) for k, v in (data.get("outputs") or {}).items()}
    write_json(path, data)

