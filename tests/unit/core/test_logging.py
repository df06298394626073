from __future__ import annotations

import logging

from aptops.core.logging import progress, progress_disabled


def test_log_lines_every_n_without_a_terminal(caplog, monkeypatch):
    monkeypatch.delenv("APTOPS_NO_PROGRESS", raising=False)
    with caplog.at_level(logging.INFO, logger="aptops.progress"):
        assert list(progress(range(25), desc="cleaning", unit="doc", log_every=10)) == list(range(25))
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "cleaning: 10/25 doc", "cleaning: 20/25 doc", "cleaning: 25/25 doc",
    ]


def test_silenced_by_env(caplog, monkeypatch):
    monkeypatch.setenv("APTOPS_NO_PROGRESS", "1")
    assert progress_disabled()
    with caplog.at_level(logging.INFO, logger="aptops.progress"):
        assert list(progress(iter(range(300)), log_every=10)) == list(range(300))
    assert not caplog.records
