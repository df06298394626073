"""One backup at a time per destination: a lease object beside the backup, taken with a conditional create.

Two backups into one prefix used to both report success while the last manifest won and the other run's
objects were left behind, unlisted. Now a backup to an object store first creates
``<prefix>/.aptops-backup.lease`` with a create-only-if-absent write (S3 ``If-None-Match: *``, which AWS S3,
SeaweedFS and MinIO honour; OSS ``x-oss-forbid-overwrite``); a second backup finds it and fails at once, naming
the holder. The holder renews it while it uploads (an ``If-Match`` replace), confirms it still holds it just
before the manifest (the commit marker) is written, and deletes it at the end. A lease not renewed for
``ttl_s`` (its holder died) is taken over, again conditionally, so exactly one of several waiting backups
wins it. Time is the server's: the lease's age is the store's clock now minus its last-modified time. As restic
does with its locks, a lease written on this same host by a process that no longer runs is stale at once: a
backup killed here does not hold up the next one for ``ttl_s``.

Repo destinations (HF Hub, ModelScope) need no lease: each backup there is one commit with its own tag, so
two backups are two versions and neither is lost.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from aptops.core.errors import StorageError

log = logging.getLogger(__name__)

LEASE = ".aptops-backup.lease"  # hidden: never a model file, never backed up or restored as one


class Lease:
    """A held lease on one store; use :func:`acquire`."""

    def __init__(self, store: Any, etag: str, body: dict[str, Any], ttl_s: float) -> None:
        self.store, self.etag, self.body, self.ttl_s = store, etag, body, ttl_s
        self.lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._renewer = threading.Thread(target=self._renew_loop, name="backup-lease", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception as exc:  # a transient failure: the next round tries again, confirm() decides
                log.warning("renewing the backup lease on %s failed: %s", self.store.uri, exc)

    def renew(self) -> None:
        """Write the lease again if it is still ours; mark it lost otherwise."""
        with self._lock:
            if self.lost:
                return
            body = dict(self.body, renewed_at=time.time())
            etag = self.store.replace_if(LEASE, json.dumps(body).encode(), self.etag)
            if etag is None:
                self.lost = "another backup took the lease over (this one did not renew it for lock_ttl_s)"
                log.error("backup lease on %s lost: %s", self.store.uri, self.lost)
            else:
                self.etag = etag

    def confirm(self) -> None:
        """Renew now and raise unless the lease is still ours: called right before the manifest is written.

        Raises:
            StorageError: the lease was taken over; this backup must not commit.
        """
        self.renew()
        if self.lost:
            raise StorageError(f"{self.store.uri}: {self.lost}; this backup did not write its manifest: run it again",
                               uri=self.store.uri, provider=getattr(self.store, "provider", None))

    def release(self) -> None:
        self._stop.set()
        self._renewer.join(timeout=5)
        with self._lock:
            if self.lost:
                return
            try:
                self.store.delete_if(LEASE, self.etag)
            except Exception as exc:  # it expires by itself after ttl_s
                log.warning("could not release the backup lease on %s (it expires after %.0f s): %s",
                            self.store.uri, self.ttl_s, exc)


def acquire(store: Any, *, ttl_s: float) -> Lease | None:
    """Take the lease on ``store``, or take over one whose holder stopped renewing it ``ttl_s`` ago.

    Returns ``None`` for a store that cannot hold one (no conditional writes).

    Raises:
        StorageError: another backup holds the lease; the message names it and when it expires.
    """
    if not hasattr(store, "create_exclusive"):
        return None
    body = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(),
            "ttl_s": ttl_s}
    data = json.dumps(body).encode()
    for _ in range(3):  # create; else take over a stale one; a race lost on the way starts again
        etag = store.create_exclusive(LEASE, data)
        if etag is not None:
            return Lease(store, etag, body, ttl_s)
        held = store.lease_state(LEASE)
        if held is None:  # released between our create and our look: try again
            continue
        held_etag, age_s, raw = held
        try:
            holder = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            holder = {}
        dead_here = _died_here(holder)
        # the holder renews every third of ITS ttl: whether it stopped is judged by its ttl, never ours (a
        # newcomer with a short lock_ttl_s must not take over a live lease renewed on a longer period)
        held_ttl = _holder_ttl(holder, ttl_s)
        if age_s <= held_ttl and not dead_here:
            raise StorageError(
                f"another backup to {store.uri} is in progress (host {holder.get('host', '?')}, pid "
                f"{holder.get('pid', '?')}, last renewed {age_s:.0f} s ago); wait for it to finish, or if it died, "
                f"run again after its lease expires ({held_ttl - age_s:.0f} s, its lock_ttl_s={held_ttl:.0f})",
                uri=store.uri, provider=getattr(store, "provider", None))
        etag = store.replace_if(LEASE, data, held_etag)
        if etag is not None:
            why = (f"its holder (pid {holder.get('pid')} on this host) is no longer running" if dead_here
                   else f"its holder had not renewed it for {age_s:.0f} s")
            log.warning("took over the backup lease on %s: %s", store.uri, why)
            return Lease(store, etag, body, ttl_s)
    raise StorageError(f"could not take the backup lease on {store.uri}: other backups keep racing for it",
                       uri=store.uri, provider=getattr(store, "provider", None))


def _holder_ttl(holder: dict[str, Any], default_s: float) -> float:
    """The TTL the holder recorded in its lease; a lease without a readable one is judged by the longer of ours
    and an hour, so a damaged or foreign lease is never taken over early."""
    ttl = holder.get("ttl_s")
    if isinstance(ttl, int | float) and not isinstance(ttl, bool) and 0 < ttl < float("inf"):
        return float(ttl)
    return max(default_s, 3600.0)


def _died_here(holder: dict[str, Any]) -> bool:
    """The lease was written on this host by a process that is gone."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False
