"""The file hash cache: a digest is reused only while the file's stat is exactly what it was when hashed."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from aptops.backup.hashcache import HashCache


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path):
    with HashCache(tmp_path / "cache" / "hashes.sqlite3", settle_s=0) as c:
        yield c


def test_unchanged_file_is_hashed_once(cache, tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(100_000))
    assert cache.sha256(f) == _sha(f)
    assert cache.sha256(f) == _sha(f)
    assert (cache.hits, cache.misses) == (1, 1)


def test_reused_across_processes_through_the_database(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    db = tmp_path / "hashes.sqlite3"
    with HashCache(db, settle_s=0) as first:
        first.sha256(f)
    with HashCache(db, settle_s=0) as second:
        assert second.sha256(f) == _sha(f) and second.hits == 1


def test_same_size_rewrite_with_the_old_mtime_put_back_is_still_seen(cache, tmp_path):
    """The classic way to fool an (mtime, size) cache; the change time gives it away."""
    f = tmp_path / "w.bin"
    f.write_bytes(b"A" * 4096)
    old = f.stat()
    cache.sha256(f)
    f.write_bytes(b"B" * 4096)
    os.utime(f, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert f.stat().st_mtime_ns == old.st_mtime_ns and f.stat().st_size == old.st_size
    assert cache.sha256(f) == _sha(f) == hashlib.sha256(b"B" * 4096).hexdigest()
    assert cache.hits == 0


def test_a_file_replaced_by_another_is_a_new_file(cache, tmp_path):
    f, other = tmp_path / "w.bin", tmp_path / "new.bin"
    f.write_bytes(b"old weights")
    cache.sha256(f)
    other.write_bytes(b"new weights")
    os.replace(other, f)  # a new inode under the old name, as an atomic save does
    assert cache.sha256(f) == hashlib.sha256(b"new weights").hexdigest() and cache.hits == 0


def test_a_file_modified_moments_ago_is_not_remembered(tmp_path):
    """Within the settle window a second write could keep the same mtime: hash, but do not remember."""
    f = tmp_path / "w.bin"
    f.write_bytes(b"fresh")
    with HashCache(tmp_path / "hashes.sqlite3", settle_s=3600) as cache:
        cache.sha256(f)
        cache.sha256(f)
        assert (cache.hits, cache.misses) == (0, 2)


def test_an_old_mtime_put_back_moments_ago_is_not_remembered(tmp_path):
    """The settle window counts from the later of mtime and ctime: ``utime`` to an old date is itself a change."""
    f = tmp_path / "w.bin"
    f.write_bytes(b"fresh")
    os.utime(f, (time.time() - 7200, time.time() - 7200))
    with HashCache(tmp_path / "hashes.sqlite3", settle_s=3600) as cache:
        cache.sha256(f)
        cache.sha256(f)
        assert (cache.hits, cache.misses) == (0, 2)


def test_an_unusable_cache_only_costs_the_hashing(tmp_path, caplog):
    (tmp_path / "not-a-db").write_bytes(b"this is not sqlite" * 100)
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    with HashCache(tmp_path / "not-a-db", settle_s=0) as cache:
        assert cache.sha256(f) == _sha(f) and cache.sha256(f) == _sha(f)
        assert cache.hits == 0
    assert "unusable" in caplog.text


def test_missing_file_is_an_error_not_a_cached_answer(cache, tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    cache.sha256(f)
    f.unlink()
    with pytest.raises(FileNotFoundError):
        cache.sha256(f)


def test_old_entries_are_forgotten(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    db = tmp_path / "hashes.sqlite3"
    with HashCache(db, settle_s=0) as cache:
        cache.sha256(f)
    import aptops.backup.hashcache as hc

    real = time.time
    monkeypatch.setattr(hc.time, "time", lambda: real() + hc.FORGET_AFTER_S + 10)
    with HashCache(db, settle_s=0) as later:
        later.sha256(f)
        assert later.hits == 0


def test_two_caches_on_one_database_do_not_hold_each_other_up(tmp_path):
    """Two backups (two processes) share the cache: neither keeps a write transaction open between files."""
    files = []
    for i in range(50):
        f = tmp_path / f"w{i}.bin"
        f.write_bytes(os.urandom(1000))
        files.append(f)
    db = tmp_path / "hashes.sqlite3"
    with HashCache(db, settle_s=0) as first, HashCache(db, settle_s=0) as second:
        for f in files:
            first.sha256(f)
            second.sha256(f)
            # no write transaction is left open between files, so the other process never waits for one
            assert not first._conn.in_transaction and not second._conn.in_transaction
    with HashCache(db, settle_s=0) as third:
        for f in files:
            assert third.sha256(f) == _sha(f)
        assert third.hits == 50
