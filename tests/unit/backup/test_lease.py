"""Issue 25: two backups to one prefix both reported success and the last manifest won. One backup at a time
per destination now, through a lease taken with a conditional create (real SeaweedFS; the OSS stand-in)."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid

import pytest

from aptops.backup import BackupConfig, backup_model, restore_model
from aptops.backup.engine import parse_location, store_for
from aptops.backup.lease import LEASE, acquire
from aptops.core.errors import StorageError
from tests.services.oss_standin import OssStandIn

pytestmark = pytest.mark.integration


@pytest.fixture(params=["s3", "oss"])
def target(request, s3_server, tmp_path, monkeypatch):
    """(destination, credentials, config) on real SeaweedFS or on the OSS stand-in."""
    if request.param == "s3":
        creds = {"aws_access_key_id": s3_server.access_key, "aws_secret_access_key": s3_server.secret_key}
        yield (f"s3://ls-{uuid.uuid4().hex[:8]}/m", creds,
               BackupConfig(endpoint_url=s3_server.endpoint, backoff_s=0.01, lock_ttl_s=30))
        return
    monkeypatch.setenv("APTOPS_CACHE_DIR", str(tmp_path / "cache"))
    with OssStandIn() as server:
        creds = {"oss_access_key_id": server.state.access_key_id,
                 "oss_access_key_secret": server.state.access_key_secret}
        yield (f"oss://ls-{uuid.uuid4().hex[:8]}/m", creds,
               BackupConfig(oss_endpoint=server.endpoint, backoff_s=0.01, lock_ttl_s=30))


def _store(dest, creds, cfg):
    store = store_for(parse_location(dest), cfg, creds)
    store.ensure_bucket()
    return store


def test_a_second_backup_fails_clearly_while_one_holds_the_destination(target, tiny_llama, tmp_path):
    dest, creds, cfg = target
    first = backup_model(tiny_llama, [dest], cfg, credentials=creds)
    assert first.ok
    other = tmp_path / "other"
    shutil.copytree(tiny_llama, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("64", "64 "))
    held = acquire(_store(dest, creds, cfg), ttl_s=cfg.lock_ttl_s)  # a backup in flight elsewhere
    try:
        second = backup_model(other, [dest], cfg, credentials=creds)
        (res,) = second.destinations
        assert res.outcome == "failure" and res.files_sent == 0
        assert "another backup to" in res.error and "is in progress" in res.error and "lock_ttl_s=30" in res.error
        with pytest.raises(StorageError, match="is in progress"):
            second.raise_for_failures()
    finally:
        held.release()
    # the first backup is intact, and once the destination is free the second goes through
    restored = restore_model(dest, output_dir=tmp_path / "r1", config=cfg, credentials=creds)
    assert (tmp_path / "r1" / "config.json").read_bytes() == (tiny_llama / "config.json").read_bytes()
    assert restored.metrics["files"] == len(first.manifest["files"])
    assert backup_model(other, [dest], cfg, credentials=creds).ok
    restore_model(dest, output_dir=tmp_path / "r2", config=cfg, credentials=creds)
    assert (tmp_path / "r2" / "config.json").read_bytes() == (other / "config.json").read_bytes()
    assert _store(dest, creds, cfg).read(LEASE) is None  # released, not left behind


def test_of_backups_racing_for_a_destination_exactly_one_wins(target):
    dest, creds, cfg = target
    stores = [_store(dest, creds, cfg) for _ in range(6)]
    start = threading.Barrier(len(stores))
    won, refused = [], []

    def race(store):
        start.wait()
        try:
            won.append(acquire(store, ttl_s=30))
        except StorageError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5 and all("is in progress" in r for r in refused)
    won[0].release()


def test_a_dead_holders_lease_is_taken_over_and_the_holder_cannot_commit(target, tiny_llama, tmp_path, caplog):
    dest, creds, cfg = target
    store = _store(dest, creds, cfg)
    # a holder that died: its lease (renewed every third of its 1 s) is there, never renewed
    assert store.create_exclusive(LEASE, json.dumps({"host": "gone", "pid": 1, "ttl_s": 1.0}).encode()) is not None
    stale = BackupConfig(**{**cfg.__dict__, "lock_ttl_s": 1.0})
    time.sleep(2.5)  # by the server's clock, older than lock_ttl_s
    caplog.set_level(logging.WARNING)
    assert backup_model(tiny_llama, [dest], stale, credentials=creds).ok
    assert "took over the backup lease" in caplog.text
    # a live holder whose lease was taken over while it stalled must not write its manifest
    mine = acquire(store, ttl_s=30)
    mine._stop.set()  # stalled: no more renewals
    assert store.replace_if(LEASE, b'{"host": "thief"}', mine.etag) is not None  # taken over
    with pytest.raises(StorageError, match="another backup took the lease over"):
        mine.confirm()
    mine.release()
    assert json.loads(store.read(LEASE)) == {"host": "thief"}  # the new holder's lease is left alone


def test_a_live_lease_is_judged_by_its_holders_ttl_not_the_newcomers(target, tiny_llama, tmp_path):
    """Issue 32: a second backup with a short lock_ttl_s took over a live lease renewed on the holder's longer
    period, and both exited 0 (manifest of one, objects of the other)."""
    dest, creds, cfg = target
    store = _store(dest, creds, cfg)
    holder = acquire(store, ttl_s=30)  # renews every 10 s
    try:
        time.sleep(2.5)  # older than the newcomer's 1 s, far younger than the holder's 30 s
        hasty = BackupConfig(**{**cfg.__dict__, "lock_ttl_s": 1.0})
        (res,) = backup_model(tiny_llama, [dest], hasty, credentials=creds).destinations
        assert res.outcome == "failure" and res.files_sent == 0
        assert "is in progress" in res.error and "its lock_ttl_s=30" in res.error
        holder.confirm()  # still ours: the holder may commit
    finally:
        holder.release()
    # a lease whose TTL cannot be read is never taken early
    assert store.create_exclusive(LEASE, b'{"host": "elsewhere", "ttl_s": "soon"}') is not None
    time.sleep(1.5)
    with pytest.raises(StorageError, match="is in progress"):
        acquire(store, ttl_s=1.0)


def test_a_lease_left_by_a_process_gone_from_this_host_is_taken_over_at_once(target, tiny_llama, caplog):
    """A backup killed here must not hold up the next one for lock_ttl_s (restic checks its locks the same way)."""
    import os
    import socket
    import subprocess

    dest, creds, cfg = target
    store = _store(dest, creds, cfg)
    gone = subprocess.Popen(["true"])
    gone.wait()
    body = {"host": socket.gethostname(), "pid": gone.pid, "started_at": time.time()}
    assert store.create_exclusive(LEASE, json.dumps(body).encode()) is not None
    caplog.set_level(logging.WARNING)
    assert backup_model(tiny_llama, [dest], cfg, credentials=creds).ok  # lock_ttl_s=30 has not passed
    assert f"its holder (pid {gone.pid} on this host) is no longer running" in caplog.text
    # a live process's lease on this host, or any lease from another host, still holds
    for holder in ({"host": socket.gethostname(), "pid": os.getppid()}, {"host": "elsewhere", "pid": gone.pid}):
        assert store.create_exclusive(LEASE, json.dumps(holder).encode()) is not None
        with pytest.raises(StorageError, match="is in progress"):
            acquire(store, ttl_s=30)
        store.delete_if(LEASE, store.lease_state(LEASE)[0])
