"""Alibaba Cloud OSS through oss2: resumable multipart upload and ranged download, CRC64 checks.

Credentials come from the arguments or ``OSS_ACCESS_KEY_ID`` / ``OSS_ACCESS_KEY_SECRET``; the endpoint from
the argument or ``OSS_ENDPOINT`` (an accelerated endpoint such as ``oss-accelerate.aliyuncs.com`` works the
same). oss2 checks the CRC64 of every upload and download against ``x-oss-hash-crc64ecma``; resumable
transfers keep their checkpoints under the aptops cache, so a retry continues where the last one stopped.
Object keys with Chinese or other non-ASCII characters are URL-encoded as UTF-8 by oss2.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ConfigError

log = logging.getLogger(__name__)
ACCELERATE_ENDPOINTS = {"global": "https://oss-accelerate.aliyuncs.com",
                        "overseas": "https://oss-accelerate-overseas.aliyuncs.com"}


@dataclass
class OssStore:
    """One OSS bucket and prefix."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    access_key_id: str | None = None
    access_key_secret: str | None = None
    part_size_mb: int = 8
    num_threads: int = 4
    accelerate: str = ""  # "", "global" or "overseas": OSS transfer acceleration
    provider: str = "oss"
    _bucket: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        oss2 = require("oss2", extra="backup", feature="OSS backup")
        endpoint = self.endpoint or os.environ.get("OSS_ENDPOINT")
        if self.accelerate:
            # the acceleration endpoints serve every region's buckets (acceleration must be on for the bucket)
            if self.accelerate not in ACCELERATE_ENDPOINTS:
                raise ConfigError(f"oss_accelerate={self.accelerate!r}: use 'global' or 'overseas' (or leave it empty)",
                                  field="oss_accelerate", value=self.accelerate)
            endpoint = ACCELERATE_ENDPOINTS[self.accelerate]
        key_id = self.access_key_id or os.environ.get("OSS_ACCESS_KEY_ID")
        secret = self.access_key_secret or os.environ.get("OSS_ACCESS_KEY_SECRET")
        if not endpoint:
            raise ConfigError("OSS needs an endpoint: set OSS_ENDPOINT (e.g. https://oss-cn-hangzhou.aliyuncs.com)",
                              field="OSS_ENDPOINT")
        if not (key_id and secret):
            raise ConfigError("OSS needs credentials: set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET",
                              field="OSS_ACCESS_KEY_ID")
        self._oss2 = oss2
        self._bucket = oss2.Bucket(oss2.Auth(key_id, secret), endpoint, self.bucket, enable_crc=True)

    @property
    def uri(self) -> str:
        return f"oss://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, path: str) -> str:
        return f"{self.prefix.strip('/')}/{path}" if self.prefix.strip("/") else path

    def _checkpoints(self, kind: str) -> Path:
        from aptops.core.assets import cache_dir

        root = cache_dir() / "oss" / kind
        root.mkdir(parents=True, exist_ok=True)
        return root

    def ensure_bucket(self) -> None:
        try:
            self._bucket.create_bucket()
            log.info("created bucket %s", self.bucket)
        except self._oss2.exceptions.ServerError as exc:
            if exc.status != 409:  # 409: it exists already
                raise

    def upload(self, local: Path, path: str, sha256: str) -> None:
        chunk = self.part_size_mb * 1024 * 1024
        self._oss2.resumable_upload(
            self._bucket, self.key(path), str(local),
            store=self._oss2.ResumableStore(root=str(self._checkpoints("upload"))),
            headers={"x-oss-meta-sha256": sha256}, multipart_threshold=chunk, part_size=chunk,
            num_threads=self.num_threads,
        )

    def download(self, path: str, local: Path) -> None:
        chunk = self.part_size_mb * 1024 * 1024
        self._oss2.resumable_download(
            self._bucket, self.key(path), str(local),
            store=self._oss2.ResumableDownloadStore(root=str(self._checkpoints("download"))),
            multiget_threshold=chunk, part_size=chunk, num_threads=self.num_threads,
        )

    def read(self, path: str) -> bytes | None:
        try:
            return self._bucket.get_object(self.key(path)).read()
        except (self._oss2.exceptions.NoSuchKey, self._oss2.exceptions.NoSuchBucket):
            return None

    def write(self, path: str, data: bytes) -> None:
        self._bucket.put_object(self.key(path), data)

    def copy(self, source: str, path: str, *, size: int, sha256: str) -> bool:
        """Copy the object at ``source`` to ``path`` on the server (CopyObject, up to 1 GiB); False above that,
        for the caller to send the file again."""
        if size > 1024**3:
            return False
        self._bucket.copy_object(self.bucket, self.key(source), self.key(path),
                                 headers={"x-oss-metadata-directive": "REPLACE", "x-oss-meta-sha256": sha256})
        return True

    def delete(self, path: str) -> None:
        self._bucket.delete_object(self.key(path))

    # conditional writes for the backup lease (aptops.backup.lease). OSS refuses to overwrite on request
    # (x-oss-forbid-overwrite) but has no If-Match on writes: a replace or delete compares the ETag first, so
    # two takers of one stale lease can race there for the time of one request.
    def create_exclusive(self, path: str, data: bytes) -> str | None:
        """Write ``path`` only if no object is there; its ETag, or None when one is."""
        try:
            return self._bucket.put_object(self.key(path), data, headers={"x-oss-forbid-overwrite": "true"}).etag
        except self._oss2.exceptions.OssError as exc:
            if getattr(exc, "code", None) == "FileAlreadyExists" or getattr(exc, "status", None) == 409:
                return None
            raise

    def _etag(self, path: str) -> str | None:
        try:
            return self._bucket.head_object(self.key(path)).etag
        except self._oss2.exceptions.NotFound:
            return None

    def replace_if(self, path: str, data: bytes, etag: str) -> str | None:
        """Overwrite ``path`` if it still has ``etag`` (compared, then written); the new ETag, or None."""
        if self._etag(path) != etag.strip('"'):
            return None
        return self._bucket.put_object(self.key(path), data).etag

    def delete_if(self, path: str, etag: str) -> None:
        """Delete ``path`` if it still has ``etag``."""
        if self._etag(path) == etag.strip('"'):
            self._bucket.delete_object(self.key(path))

    def lease_state(self, path: str) -> tuple[str, float, bytes] | None:
        """``(etag, age in seconds by the server's clock, content)`` of ``path``, or None if it is not there."""
        from email.utils import parsedate_to_datetime

        try:
            got = self._bucket.get_object(self.key(path))
        except self._oss2.exceptions.NoSuchKey:
            return None
        now = parsedate_to_datetime(got.headers["date"]).timestamp() if "date" in got.headers else time.time()
        return got.etag, now - float(got.last_modified), got.read()

    def listing(self) -> dict[str, tuple[int, float]]:
        """``{path: (size, last modified, epoch seconds)}`` of every object under the prefix, a page per 100."""
        prefix = self.key("")
        return {o.key[len(prefix):]: (int(o.size), float(o.last_modified))
                for o in self._oss2.ObjectIterator(self._bucket, prefix=prefix)}

    def remote_sha256(self, path: str) -> str | None:
        try:
            return self._bucket.head_object(self.key(path)).headers.get("x-oss-meta-sha256")
        except self._oss2.exceptions.OssError:
            return None

    def is_transient(self, exc: BaseException) -> bool:
        errors = self._oss2.exceptions
        if isinstance(exc, errors.RequestError | ConnectionError):
            return True
        return isinstance(exc, errors.ServerError) and (exc.status >= 500 or exc.status == 429
                                                        or exc.code in ("RequestTimeout",))

    def error_code(self, exc: BaseException) -> str | None:
        """The OSS error code of a failed call (``SignatureDoesNotMatch`` ...), if the server sent one."""
        return getattr(exc, "code", None) if isinstance(exc, self._oss2.exceptions.OssError) else None
