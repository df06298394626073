"""Backup and restore of a model folder, verified end to end.

``backup_model`` sends a folder to every destination in parallel; each destination retries transient
errors with exponential backoff and jitter, skips files whose SHA-256 it already holds, and writes
``manifest.json`` last: a backup without a manifest is incomplete and is never restored. ``restore_model``
reads a manifest, refuses unsafe paths, downloads every file to a temporary folder, checks each SHA-256,
and only then moves the folder into place; a source that fails or serves a corrupt object is skipped for
the next.

This version covers S3, S3-compatible stores and Alibaba OSS; the Hugging Face Hub and ModelScope come next.

Try it on a CPU against any S3 endpoint: ``aptops backup MODEL_DIR --to s3://bucket/models/m1``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aptops.backup.hashcache import HashCache
from aptops.backup.lease import acquire as acquire_lease
from aptops.backup.manifest import (
    MANIFEST,
    content_key,
    extract_members,
    list_model_files,
    manifest_of,
    pack_small_files,
    parse_manifest,
    sha256_file,
)
from aptops.core.artifacts import StageResult
from aptops.core.config import check_choice, check_range
from aptops.core.errors import ConfigError, DiskFullError, InvalidArtifactError, StorageError, is_disk_full
from aptops.core.locations import Location, parse_location

log = logging.getLogger(__name__)
T = TypeVar("T")
_COUNTS = threading.Lock()
MiB = 1024 * 1024


def _small_first_in_parallel(items: Sequence[T], size: Callable[[T], int], work: Callable[[T], Any],
                             workers: int, large_at_once: int = 1, small_below: int = 8 * MiB) -> list[Any]:
    """``work`` over ``items``, in order of results: items under ``small_below`` bytes (one request each) on a
    pool of ``workers`` threads while the large ones run ``large_at_once`` at a time (each is parallel
    inside). The first failure cancels what is queued."""
    results: list[Any] = [None] * len(items)
    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=large_at_once) as large:
        futures = {i: pool.submit(work, item) for i, item in enumerate(items) if size(item) < small_below}
        futures |= {i: large.submit(work, item) for i, item in enumerate(items) if i not in futures}
        try:
            for i, future in futures.items():
                results[i] = future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            large.shutdown(wait=True, cancel_futures=True)
            raise
    return results


@dataclass(frozen=True, kw_only=True)
class BackupConfig:
    """Retry and transfer settings.

    Attributes:
        max_retries: retries of one operation after a transient error (0 = no retry).
        backoff_s: the first backoff; each retry doubles it, with full jitter.
        max_backoff_s: the longest single wait.
        parallel_destinations: destinations transferred at once.
        endpoint_url: an S3-compatible endpoint for s3:// locations (else ``AWS_ENDPOINT_URL`` or AWS).
        region_name: the S3 region.
        locations: where backups live, for ``restore_model(source="auto")`` to probe.
        oss_endpoint: the OSS endpoint for oss:// locations (else ``OSS_ENDPOINT``).
        oss_accelerate: ``global`` or ``overseas`` to go through OSS transfer acceleration (the bucket must
            have it enabled); empty: the regional endpoint.
        modelscope_endpoint: the ModelScope hub for modelscope:// locations (else ``MODELSCOPE_ENDPOINT``).
        pack_small_files_kb: pack every file smaller than this many KiB into one tar archive (0: off) —
            for folders of thousands of small files, where one object per file costs a request each.
        file_concurrency: files under one part sent or fetched at once per destination; larger files go
            in parallel parts.
        part_size_mb: the multipart part (and ranged download) size of S3 and OSS transfers.
        reuse_hashes: take a file's SHA-256 from the last backup that hashed it while its device, inode,
            size, modification and change times are unchanged (:mod:`aptops.backup.hashcache`); False
            reads and hashes every byte every time.
        follow_symlinks: back up what symbolic links to files inside the folder point at; off, every link is
            skipped with a warning. A link that leaves the folder is never followed.
        lock_ttl_s: how long a backup's lease on an object-store destination (:mod:`aptops.backup.lease`)
            holds without renewal: a second backup to the same place fails while it holds; one whose holder
            died takes it over after this long.
    """

    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    parallel_destinations: int = 4
    endpoint_url: str | None = None
    region_name: str | None = None
    locations: tuple[str, ...] = ()
    oss_endpoint: str | None = None
    oss_accelerate: str = ""
    modelscope_endpoint: str | None = None
    pack_small_files_kb: int = 0
    file_concurrency: int = 8
    part_size_mb: int = 8
    reuse_hashes: bool = True
    follow_symlinks: bool = False
    lock_ttl_s: float = 300.0

    def __post_init__(self) -> None:
        check_range("max_retries", self.max_retries, min_value=0, max_value=20)
        check_range("backoff_s", self.backoff_s, min_value=0.0)
        check_range("parallel_destinations", self.parallel_destinations, min_value=1, max_value=64)
        check_choice("oss_accelerate", self.oss_accelerate, ("", "global", "overseas"))
        check_range("pack_small_files_kb", self.pack_small_files_kb, min_value=0, max_value=1024 * 1024)
        check_range("file_concurrency", self.file_concurrency, min_value=1, max_value=256)
        check_range("part_size_mb", self.part_size_mb, min_value=5, max_value=1024)  # S3: parts of 5 MiB-5 GiB
        check_range("lock_ttl_s", self.lock_ttl_s, min_value=1.0, max_value=86_400.0)


@dataclass
class DestinationResult:
    """What happened at one destination."""

    destination: str
    outcome: str = "pending"
    bytes_sent: int = 0
    files_sent: int = 0
    files_skipped: int = 0
    seconds: float = 0.0
    retries: int = 0
    error: str | None = None


@dataclass
class BackupResult(StageResult):
    """What :func:`backup_model` did: the manifest, one :class:`DestinationResult` per destination, and their
    totals as ``metrics`` (bytes and files sent, files skipped as unchanged, retries, destinations failed)."""

    stage: str = "backup"
    manifest: dict[str, Any] = field(default_factory=dict)
    destinations: list[DestinationResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        d = self.destinations
        self.metrics = {
            "bytes_sent": float(sum(x.bytes_sent for x in d)), "files_sent": float(sum(x.files_sent for x in d)),
            "files_skipped": float(sum(x.files_skipped for x in d)), "retries": float(sum(x.retries for x in d)),
            "destinations": float(len(d)), "destinations_failed": float(sum(x.outcome != "success" for x in d)),
            "files": float(len(self.manifest.get("files", ()))), "total_bytes": float(self.manifest.get("total_bytes", 0)),
            **self.metrics,
        }
        self.details = {"destinations": [dataclasses.asdict(x) for x in d], **self.details}

    @property
    def ok(self) -> bool:
        return all(d.outcome == "success" for d in self.destinations)

    def raise_for_failures(self) -> BackupResult:
        """Raise :class:`StorageError` naming every destination that failed, if any did; else return the result."""
        failed = [d for d in self.destinations if d.outcome != "success"]
        if failed:
            raise StorageError("backup failed at " + "; ".join(f"{d.destination}: {d.error}" for d in failed),
                               uri=", ".join(d.destination for d in failed))
        return self


def store_for(location: Location, config: BackupConfig, credentials: dict[str, str | None] | None = None) -> Any:
    """The store behind a parsed location (s3 and oss in this version)."""
    creds = credentials or {}
    if location.scheme == "s3":
        from aptops.backup.s3 import S3Store

        return S3Store(
            bucket=location.bucket, prefix=location.key,
            endpoint_url=config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
            region_name=config.region_name, aws_access_key_id=creds.get("aws_access_key_id"),
            aws_secret_access_key=creds.get("aws_secret_access_key"), file_concurrency=config.file_concurrency,
            multipart_chunk_mb=config.part_size_mb,
        )
    if location.scheme == "oss":
        from aptops.backup.oss import OssStore

        return OssStore(bucket=location.bucket, prefix=location.key, endpoint=config.oss_endpoint,
                        accelerate=config.oss_accelerate, part_size_mb=config.part_size_mb,
                        access_key_id=creds.get("oss_access_key_id"),
                        access_key_secret=creds.get("oss_access_key_secret"))
    if location.scheme == "hf":
        from aptops.backup.hf import HfStore

        return HfStore(repo_id=location.bucket, prefix=location.key, revision=location.revision,
                       repo_type=location.repo_type or "model", token=creds.get("hf_token"))
    if location.scheme == "modelscope":
        from aptops.backup.modelscope import ModelScopeStore

        return ModelScopeStore(repo_id=location.bucket, prefix=location.key, revision=location.revision,
                               token=creds.get("modelscope_token"), endpoint=config.modelscope_endpoint)
    raise ConfigError(
        f"backup to {location.scheme}:// is not available in this version: supported destinations are s3://, oss://, "
        "hf://, modelscope://",
        field="destinations", value=location.uri,
    )


def _retry(fn: Callable[[], T], store: Any, config: BackupConfig, result: DestinationResult, what: str) -> T:
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if attempt >= config.max_retries or not store.is_transient(exc):
                raise
            attempt += 1
            with _COUNTS:  # files of one destination retry from several threads
                result.retries += 1
            wait = random.uniform(0, min(config.max_backoff_s, config.backoff_s * 2 ** (attempt - 1)))
            log.warning("%s at %s failed (%s); retry %d/%d in %.2fs", what, store.uri, type(exc).__name__,
                        attempt, config.max_retries, wait)
            time.sleep(wait)


def _backup_one(folder: Path, files: list[tuple[str, int]], hashes: dict[str, Future[str]], store: Any,
                config: BackupConfig, members: Sequence[dict[str, Any]] = (),
                signatures: dict[str, tuple[int, ...]] | None = None) -> DestinationResult:
    result = DestinationResult(destination=store.uri)
    start = time.monotonic()
    try:
        _retry(store.ensure_bucket, store, config, result, "bucket check")
        if hasattr(store, "commit_backup"):  # a repo: the whole backup is one commit, manifest included
            entries = [(p, n, hashes[p].result()) for p, n in files]
            data = json.dumps(_manifest(files, hashes, members), indent=2).encode()
            message = f"aptops backup of {folder.name} ({len(files)} files)"
            sent = _retry(lambda: store.commit_backup(folder, entries, data, message), store, config, result,
                          "commit")
            for path, _ in files:  # the commit's files were read after they were hashed
                _unchanged_since_hashed(folder, path, signatures)
            result.files_sent, result.bytes_sent, result.files_skipped = sent
            result.outcome = "success"
            result.seconds = time.monotonic() - start
            return result
        lease = _retry(lambda: acquire_lease(store, ttl_s=config.lock_ttl_s), store, config, result, "lease")
        try:
            _backup_objects(folder, files, hashes, store, config, members, result, lease, signatures)
        finally:
            if lease is not None:
                lease.release()
        result.outcome = "success"
    except Exception as exc:
        result.outcome = "failure"
        result.error = _describe(exc, store)
        log.error("backup to %s failed: %s", store.uri, result.error)
    result.seconds = time.monotonic() - start
    return result


def _backup_objects(folder: Path, files: list[tuple[str, int]], hashes: dict[str, Future[str]], store: Any,
                    config: BackupConfig, members: Sequence[dict[str, Any]], result: DestinationResult,
                    lease: Any, signatures: dict[str, tuple[int, ...]] | None = None) -> None:
    """Send what changed to an object store, then the manifest (the commit marker), under the backup's lease.

    Nothing the current manifest points at is written before the new manifest is committed: a changed file goes
    to its content-addressed key, so a backup killed at any moment leaves the last one restorable. Once the new
    manifest is committed, changed files are copied to their own paths (the prefix reads as the model folder
    again), a second manifest says so, and objects no manifest points at any more are removed.
    """
    old = _retry(lambda: store.read(MANIFEST), store, config, result, "manifest read")
    previous = [e for e in parse_manifest(old, source=f"{store.uri}/{MANIFEST}") if e.archive is None] if old else []
    old_at = {e.path: e for e in previous}
    referenced = {e.key for e in previous}  # what the committed backup reads: never written before the commit
    still_there = _still_there(store, config, result) if previous else None
    keys: dict[str, str] = {}
    lock = threading.Lock()

    def send(item: tuple[str, int]) -> bool:
        path, size = item
        sha = hashes[path].result()  # hashed in the background while earlier files upload
        before = old_at.get(path)
        if before is not None and before.sha256 == sha and (
                still_there(before.key, size) if still_there is not None else store.remote_sha256(before.key) == sha):
            with lock:
                keys[path] = before.key
            return False
        key = path if path not in referenced else content_key(sha)
        _retry(lambda: store.upload(folder / path, key, sha), store, config, result, f"upload {path}")
        with lock:
            keys[path] = key
        return True

    sent_flags = _small_first_in_parallel(files, lambda f: f[1], send, config.file_concurrency,
                                          getattr(store, "large_files_at_once", 1), config.part_size_mb * MiB)
    result.files_sent = sum(sent_flags)
    result.files_skipped = len(files) - result.files_sent
    result.bytes_sent = sum(size for (_, size), sent in zip(files, sent_flags, strict=True) if sent)
    for path, _ in files:  # a file rewritten after it was hashed would be committed under the wrong hash
        _unchanged_since_hashed(folder, path, signatures)
    # the manifest goes last: it is the commit marker of the backup, written only while the lease is ours
    data = json.dumps(_manifest(files, hashes, members, keys), indent=2).encode()
    if lease is not None:
        lease.confirm()
    _retry(lambda: store.write(MANIFEST, data), store, config, result, "manifest write")
    committed = set(keys.values())
    try:
        moved = {p: k for p, k in keys.items() if k != p}
        if moved:
            sizes = dict(files)
            for path, key in sorted(moved.items()):
                _retry(lambda p=path, k=key: _put_at_path(store, folder, p, k, sizes[p], hashes[p].result(), signatures),
                       store, config, result, f"copy {path}")
            plain = json.dumps(_manifest(files, hashes, members), indent=2).encode()
            if lease is not None:
                lease.confirm()
            _retry(lambda: store.write(MANIFEST, plain), store, config, result, "manifest write")
            committed = {p for p, _ in files}
        stale = sorted((referenced | set(keys.values())) - committed - {MANIFEST})
        for key in stale:
            _retry(lambda k=key: store.delete(k), store, config, result, f"delete {key}")
        if stale:
            log.info("%s: removed %d object(s) no manifest points at any more", store.uri, len(stale))
    except Exception as exc:  # the new backup is committed and restorable: tidying up is for the next run
        log.warning("%s: the backup is committed, but putting changed files back at their paths or removing old "
                    "objects failed (%s); the next backup finishes it", store.uri, _describe(exc, store))


def _put_at_path(store: Any, folder: Path, path: str, key: str, size: int, sha: str,
                 signatures: dict[str, tuple[int, ...]] | None) -> None:
    """Put the bytes stored at ``key`` at ``path`` too: a copy on the server where the store can, else sent again."""
    if hasattr(store, "copy") and store.copy(key, path, size=size, sha256=sha):
        return
    store.upload(folder / path, path, sha)
    _unchanged_since_hashed(folder, path, signatures)


def file_signature(path: Path) -> tuple[int, ...]:
    """What changes whenever a file's bytes are written or the file replaced: size, modification time, inode.
    (Not the change time: the repo stores hard-link the files they send, which changes it and nothing else.)"""
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _unchanged_since_hashed(folder: Path, path: str, signatures: dict[str, tuple[int, ...]] | None) -> None:
    if signatures is None or path not in signatures:
        return
    try:
        now = file_signature(folder / path)
    except FileNotFoundError:
        now = None
    if now != signatures[path]:
        raise StorageError(f"{path!r} changed while it was being backed up (it was written to after it was hashed); "
                           "this backup did not commit and the previous one is intact: back up again once nothing "
                           "writes into the folder", uri=str(folder / path))


def _still_there(store: Any, config: BackupConfig, result: DestinationResult) -> Callable[[str, int], bool] | None:
    """For a store that can list its objects: does an object still hold what the last manifest says?

    One listing answers for every file (a HEAD each took 38.6 s for 10,000 files): the object must be there,
    with the manifest's size, and written no later than the manifest itself (the manifest goes last, so an
    object changed since shows a later modification time, by the server's one clock). None: ask per file.
    """
    if not hasattr(store, "listing"):
        return None
    listed = _retry(store.listing, store, config, result, "listing")
    written = listed.get(MANIFEST, (0, float("-inf")))[1]

    def check(path: str, size: int) -> bool:
        got = listed.get(path)
        return got is not None and got[0] == size and got[1] <= written

    return check


# Error codes that mean the credentials are wrong, whatever the provider.
_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "401", "403"})


def _manifest(files: list[tuple[str, int]], hashes: dict[str, Future[str]],
              members: Sequence[dict[str, Any]] = (), keys: dict[str, str] | None = None) -> dict[str, Any]:
    """The manifest: every uploaded object (with the key it is stored under when that is not its path), then
    every file packed into an archive (with its archive)."""
    entries = []
    for p, n in files:
        entry: dict[str, Any] = {"path": p, "size": n, "sha256": hashes[p].result()}
        if keys is not None and keys.get(p, p) != p:
            entry["object"] = keys[p]
        entries.append(entry)
    return manifest_of(entries + list(members))


def _describe(exc: BaseException, store: Any) -> str:
    """One line about a failed call: the exception type, the provider's error code, a hint; never a secret."""
    if isinstance(exc, StorageError):
        return str(exc)
    code = store.error_code(exc)
    hint = " (check the credentials)" if code in _CREDENTIAL_CODES else ""
    return f"{type(exc).__name__}{': ' + code if code else ''}{hint}"


def backup_model(
    model_path: str | Path,
    destinations: Sequence[str],
    config: BackupConfig | None = None,
    *,
    credentials: dict[str, str | None] | None = None,
) -> BackupResult:
    """Back a model folder up to every destination, in parallel, verified by a manifest.

    Args:
        model_path: the folder to back up.
        destinations: locations (``s3://bucket/prefix``); all are validated before any upload.
        config: retries, parallelism, endpoint.
        credentials: explicit credentials; otherwise the provider's standard chain.

    Returns:
        The manifest and one :class:`DestinationResult` per destination.

    Raises:
        ConfigError: no destinations, or an invalid or unsupported location.
        ArtifactNotFoundError / InvalidArtifactError: the folder is missing or empty.
    """
    config = config or BackupConfig()
    if not destinations:
        raise ConfigError("no destinations: give at least one, e.g. s3://bucket/models/name", field="destinations")
    stores = [store_for(parse_location(d), config, credentials) for d in destinations]
    return _backup_to_stores(model_path, stores, config)


def _backup_to_stores(model_path: str | Path, stores: Sequence[Any], config: BackupConfig) -> BackupResult:
    """List, pack (if asked) and hash the folder once, then back it up to every store in parallel."""
    folder = Path(model_path)
    files = list_model_files(folder, follow_symlinks=config.follow_symlinks)
    with tempfile.TemporaryDirectory(prefix="aptops-pack-") as staging:
        members: list[dict[str, Any]] = []
        if config.pack_small_files_kb:
            files, members = pack_small_files(folder, files, config.pack_small_files_kb * 1024, Path(staging))
            if members:
                folder = Path(staging)
                log.info("packed %d small files into one archive", len(members))
        # one hashing thread runs ahead of the uploads, so verification costs little extra wall time
        with contextlib.ExitStack() as stack:
            cache = stack.enter_context(HashCache()) if config.reuse_hashes else None
            digest = cache.sha256 if cache is not None else sha256_file
            hasher = stack.enter_context(ThreadPoolExecutor(max_workers=1))  # shut down before the cache closes
            # taken before hashing: a file whose signature differs after it was sent was written meanwhile
            signatures = {rel: file_signature(folder / rel) for rel, _ in files}
            hashes = {rel: hasher.submit(digest, folder / rel) for rel, _ in files}
            with ThreadPoolExecutor(max_workers=min(config.parallel_destinations, len(stores))) as pool:
                results = list(pool.map(lambda s: _backup_one(folder, files, hashes, s, config, members, signatures),
                                        stores))
            manifest = _manifest(files, hashes, members)
            if cache is not None and cache.hits:
                log.info("%d of %d files unchanged since they were last hashed: SHA-256 reused", cache.hits, len(files))
    return BackupResult(manifest=manifest, destinations=results)


def restore_model(
    source: str | Sequence[str],
    *,
    output_dir: str | Path,
    config: BackupConfig | None = None,
    model_id: str | None = None,
    credentials: dict[str, str | None] | None = None,
    overwrite: bool = False,
) -> StageResult:
    """Restore a backup into ``output_dir``, trying sources in turn until one verifies.

    ``output_dir`` must be new or empty: a folder that holds anything is refused before any download unless
    ``overwrite``, which replaces it whole (atomically, once every file verified). Nothing but the restore's
    own staging folder (``.<name>.restore-<id>`` beside it) is ever created or removed.

    Args:
        source: ``"auto"`` (probe ``config.locations`` and try the fastest healthy ones first), one location,
            or a list of them (tried in order).
        output_dir: the folder to create (replaced atomically only after every file verified).
        config: retries, endpoint, and the locations ``auto`` probes.
        model_id: a sub-path under each location (``None`` or ``""``: the locations name the backup itself).
        credentials: explicit credentials; otherwise the provider's standard chain.
        overwrite: replace an ``output_dir`` that already holds files.

    Returns:
        A :class:`StageResult` naming the source used and the bytes restored.

    Raises:
        ConfigError: no source, ``auto`` without ``config.locations``, or ``output_dir`` is the working folder
            (or above it), or holds files and ``overwrite`` is off.
        StorageError: no source held a complete, uncorrupted backup (each source's reason is listed).
    """
    config = config or BackupConfig()
    if source == "auto":
        if not config.locations:
            raise ConfigError("source='auto' probes config.locations, which is empty: list the backup locations",
                              field="locations")
        bases = list(config.locations)
    else:
        bases = [source] if isinstance(source, str) else list(source)
    if not bases:
        raise ConfigError("no source to restore from", field="source")
    local_path = _restore_target(Path(output_dir), overwrite)
    locations = [parse_location(b).join(model_id) if model_id else parse_location(b) for b in bases]
    stores = [store_for(loc, config, credentials) for loc in locations]
    if source == "auto":
        stores = _fastest_first(stores)
    reasons = []
    for store in stores:
        try:
            return _restore_one(store, local_path, config)
        except DiskFullError:
            raise  # the same disk for every source: trying the next would fill it again
        except (StorageError, InvalidArtifactError) as exc:
            reasons.append(f"{store.uri}: {exc}")
            log.warning("restore from %s failed: %s; trying the next source", store.uri, exc)
        except Exception as exc:
            reasons.append(f"{store.uri}: {_describe(exc, store)}")
            log.warning("restore from %s failed: %s; trying the next source", store.uri, _describe(exc, store))
    raise StorageError("no source could restore a verified copy: " + "; ".join(reasons),
                       uri=", ".join(s.uri for s in stores))


def _restore_target(path: Path, overwrite: bool) -> Path:
    """The absolute restore folder, once it is known not to hold anything a restore would destroy."""
    target = path.expanduser().resolve()
    here = Path.cwd().resolve()
    if target == here or here.is_relative_to(target):
        raise ConfigError(f"cannot restore into {str(path)!r}: it is the working folder (or holds it); restore into "
                          "a new folder such as --out restored/", field="output_dir", value=str(path))
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{str(path)!r} is a file, not a folder: restore into a new folder", field="output_dir",
                          value=str(path))
    held = sum(1 for _ in target.iterdir()) if target.is_dir() and not overwrite else 0
    if held:
        raise ConfigError(f"{str(path)!r} already holds {held} entr{'y' if held == 1 else 'ies'}; restore into a new "
                          "or empty folder, or pass overwrite (--overwrite) to replace it with the backup",
                          field="output_dir", value=str(path))
    return target


def _staging_leftovers(local_path: Path) -> list[Path]:
    """Staging folders of earlier restores into ``local_path`` (``.<name>.restore-<16 hex>``), matched exactly:
    a name with ``*`` or ``?`` in it is a name, not a pattern."""
    prefix = f".{local_path.name}.restore-"
    return [p for p in local_path.parent.iterdir()
            if p.name.startswith(prefix) and len(p.name) == len(prefix) + 16
            and all(c in "0123456789abcdef" for c in p.name[len(prefix):]) and p.is_dir() and not p.is_symlink()]


def _fastest_first(stores: list[Any]) -> list[Any]:
    """Time a manifest read at every store (in parallel); healthy stores first, fastest first."""

    def probe(store: Any) -> tuple[float, Any]:
        start = time.monotonic()
        try:
            ok = store.read(MANIFEST) is not None
        except Exception as exc:
            log.info("probe of %s failed: %s", store.uri, _describe(exc, store))
            ok = False
        return (time.monotonic() - start) if ok else float("inf"), store

    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        timed = list(pool.map(probe, stores))
    for seconds, store in timed:
        log.info("probe %s: %s", store.uri, "no backup" if seconds == float("inf") else f"{seconds * 1000:.0f} ms")
    # unhealthy ones stay at the end: they still get a try, their failure is reported
    return [store for _, store in sorted(timed, key=lambda item: item[0])]


def _done(value: bool) -> Future[bool]:
    future: Future[bool] = Future()
    future.set_result(value)
    return future


def _matches(path: Path, size: int, sha256: str) -> bool:
    return path.stat().st_size == size and sha256_file(path) == sha256


def _restore_one(store: Any, local_path: Path, config: BackupConfig) -> StageResult:
    scratch = DestinationResult(destination=store.uri)
    raw = _retry(lambda: store.read(MANIFEST), store, config, scratch, "manifest read")
    if raw is None:
        raise StorageError(f"{store.uri} holds no {MANIFEST}: no complete backup there", uri=store.uri)
    entries = parse_manifest(raw, source=f"{store.uri}/{MANIFEST}")
    local_path.parent.mkdir(parents=True, exist_ok=True)
    # The staging folder is named after the source and its manifest, so a restore that was killed (or
    # failed on a transient error) is continued by the next run — in this process or another — instead
    # of starting over: finished files that still verify are kept, a large file's finished ranges too.
    digest = hashlib.sha256(store.uri.encode() + b"\0" + raw).hexdigest()[:16]
    tmp = local_path.parent / f".{local_path.name}.restore-{digest}"
    tmp.mkdir(exist_ok=True)
    start = time.monotonic()
    try:
        # each file is verified in the background while the next one downloads
        with ThreadPoolExecutor(max_workers=1) as verifier:

            def fetch(e: Any) -> Future[bool] | None:
                target = tmp / e.path
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".ranges").exists()
                if target.is_file() and not partial and _matches(target, e.size, e.sha256):
                    return None  # left by an interrupted run, and still correct
                got = _retry(lambda: store.download(e.key, target), store, config, scratch, f"download {e.path}")
                if isinstance(got, str):  # the store hashed the bytes as they arrived
                    return _done(got == e.sha256 and target.stat().st_size == e.size)
                return verifier.submit(_matches, target, e.size, e.sha256)

            direct = [e for e in entries if e.archive is None]  # packed files come out of their archive
            checks = _small_first_in_parallel(direct, lambda e: e.size, fetch, config.file_concurrency,
                                              getattr(store, "large_files_at_once", 1), config.part_size_mb * MiB)
            kept = sum(ok is None for ok in checks)
            for e, ok in zip(direct, checks, strict=True):
                if ok is not None and not ok.result():
                    (tmp / e.path).unlink(missing_ok=True)
                    raise InvalidArtifactError(f"{store.uri}/{e.key} does not match its manifest (corrupt object)")
        for archive in sorted({e.archive for e in entries if e.archive is not None}):
            packed = [e for e in entries if e.archive == archive]
            extract_members(tmp / archive, tmp, packed)
            (tmp / archive).unlink()
            bad = [e.path for e in packed if not _matches(tmp / e.path, e.size, e.sha256)]
            if bad:
                raise InvalidArtifactError(f"{store.uri}: {bad[0]!r} from {archive} does not match its manifest")
        (tmp / MANIFEST).write_bytes(raw)
        if local_path.exists():
            old = local_path.with_name(f".{local_path.name}.old-{os.getpid()}")
            os.replace(local_path, old)
            os.replace(tmp, local_path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, local_path)
    except InvalidArtifactError:
        shutil.rmtree(tmp, ignore_errors=True)  # this source is bad: nothing of it is worth keeping
        raise
    except OSError as exc:
        if not is_disk_full(exc):
            log.warning("restore from %s interrupted; %s keeps what arrived, the next restore continues from it",
                        store.uri, tmp)
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back: a full disk helps nobody
        total = sum(e.size for e in entries if e.archive is None)
        free = shutil.disk_usage(local_path.parent).free
        raise DiskFullError(f"the disk holding {str(local_path)!r} is full: this backup needs {total:,} bytes and "
                            f"{free:,} are free; the partial restore was removed: free space or restore elsewhere "
                            "(--out)", uri=store.uri) from None
    except BaseException:
        log.warning("restore from %s interrupted; %s keeps what arrived, the next restore continues from it",
                    store.uri, tmp)
        raise
    for stale in _staging_leftovers(local_path):  # other versions' leftovers
        shutil.rmtree(stale, ignore_errors=True)
    archives = {e.archive for e in entries if e.archive is not None}
    restored = [e for e in entries if e.path not in archives]
    total = sum(e.size for e in restored)
    return StageResult("backup", outputs={"model": str(local_path), "source": store.uri},
                       metrics={"bytes": float(total), "files": float(len(restored)), "files_kept": float(kept),
                                "seconds": time.monotonic() - start, "retries": float(scratch.retries)})
