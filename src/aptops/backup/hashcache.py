"""SHA-256 of files, remembered across backups by what the file system says about each file.

Hashing every byte is the one part of a backup that costs as much as sending it (about 1.3 GB/s of one
core for SHA-256, the speed of a fast link): a 140 GB checkpoint backed up again, or to one more
destination, would be read and hashed in full each time. Like git's index, restic and rsync, this cache
keeps each file's digest beside its device, inode, size, modification time and change time (``ctime``:
the kernel sets it on any write or ``utime``, so a file cannot be changed behind the cache's back by
restoring its old modification time) and reuses it while all five are unchanged.

Two guards keep a stale digest out:

* a file whose stat changed while it was being hashed is not remembered;
* a file modified (or its change time set) less than ``settle_s`` seconds before it was hashed is not
  remembered ("racy" in git's words: a write in the same clock tick would leave the times unchanged).

The cache is one SQLite file under the aptops cache (``$APTOPS_CACHE_DIR``), safe to share between
processes; delete it at any time. ``BackupConfig(reuse_hashes=False)`` hashes every byte every time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from aptops.backup.manifest import sha256_file

log = logging.getLogger(__name__)
FORGET_AFTER_S = 90 * 24 * 3600  # entries not used for this long are dropped when the cache is opened

_SCHEMA = """CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
    sha256 TEXT NOT NULL, used REAL NOT NULL)"""


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class HashCache:
    """``sha256(path)``: the remembered digest while the file's stat is unchanged, else a fresh one.

    Args:
        db: the SQLite file (default ``<aptops cache>/file-hashes.sqlite3``).
        settle_s: files modified this recently are hashed but not remembered.
    """

    def __init__(self, db: str | Path | None = None, settle_s: float = 2.0) -> None:
        if db is None:
            from aptops.core.assets import cache_dir

            db = cache_dir() / "file-hashes.sqlite3"
        self.db = Path(db)
        self.settle_s = settle_s
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._new: dict[str, tuple[Any, ...]] = {}  # entries not yet written, flushed at most a second later
        self._touched: list[str] = []
        self._flushed = time.monotonic()
        try:
            self.db.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.db, timeout=5, check_same_thread=False)
            # a crash loses at most the last second's entries (hashing those files again); WAL lets other
            # processes read while one writes
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            conn.execute("DELETE FROM files WHERE used < ?", (time.time() - FORGET_AFTER_S,))
            conn.commit()
            self._conn = conn
        except (OSError, sqlite3.Error) as exc:  # a read-only or broken cache only costs the hashing
            log.warning("file hash cache %s unusable (%s); hashing every file", self.db, exc)

    def sha256(self, path: Path) -> str:
        path = Path(path).absolute()
        before = path.stat()
        known = self._lookup(path, before)
        if known is not None:
            self.hits += 1
            return known
        self.misses += 1
        digest = sha256_file(path)
        after = path.stat()
        changed = max(after.st_mtime_ns, after.st_ctime_ns) / 1e9  # a restored old mtime leaves ctime recent
        if _identity(after) == _identity(before) and time.time() - changed >= self.settle_s:
            self._remember(path, after, digest)
        return digest

    def _lookup(self, path: Path, st: os.stat_result) -> str | None:
        if self._conn is None:
            return None
        with self._lock, contextlib.suppress(sqlite3.Error):
            row = self._new.get(str(path), (None,))[1:] or self._conn.execute(
                "SELECT dev, ino, size, mtime_ns, ctime_ns, sha256, used FROM files WHERE path = ?", (str(path),)).fetchone()
            if row is not None and tuple(row[:5]) == _identity(st):
                if row[6] < time.time() - 24 * 3600:  # the expiry needs the last use to the day
                    self._touched.append(str(path))
                    self._flush_now_and_then()
                return str(row[5])
        return None

    def _remember(self, path: Path, st: os.stat_result, digest: str) -> None:
        if self._conn is None:
            return
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._new[str(path)] = (str(path), *_identity(st), digest, time.time())
            self._flush_now_and_then()

    def _flush_now_and_then(self) -> None:
        if len(self._new) + len(self._touched) >= 512 or time.monotonic() - self._flushed >= 1.0:
            self._flush()

    def _flush(self) -> None:
        """Write the buffered entries in one short transaction (the caller holds the lock): a commit per file
        cost 1.5 ms a file, and a transaction left open would make another process's writes wait."""
        if self._conn is None or not (self._new or self._touched):
            return
        new, touched, self._new, self._touched = list(self._new.values()), self._touched, {}, []
        self._flushed = time.monotonic()
        with self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", new)
            self._conn.executemany("UPDATE files SET used = ? WHERE path = ?", [(time.time(), p) for p in touched])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._flush()
                self._conn.close()
                self._conn = None

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
