from __future__ import annotations

import json

import pytest

from aptops.core.artifacts import (
    StageResult,
    atomic_output,
    finish_artifact,
    is_complete,
    read_json,
    require_complete,
    write_lineage,
)
from aptops.core.errors import ArtifactNotFoundError, InvalidArtifactError
from aptops.data import CleanConfig


def test_atomic_output_appears_only_when_done(tmp_path):
    final = tmp_path / "out"
    with atomic_output(final) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not final.exists()
        finish_artifact(tmp, StageResult("data", metrics={"rows": 3.0}), CleanConfig())
    assert (final / "a.txt").read_text() == "x"
    assert is_complete(final)
    assert read_json(final / "config.json")["strategy"] == "basic"
    assert read_json(final / "result.json")["metrics"] == {"rows": 3.0}


def test_crash_leaves_previous_artifact_and_no_temp(tmp_path):
    final = tmp_path / "out"
    with atomic_output(final) as tmp:
        (tmp / "v").write_text("1")
        finish_artifact(tmp, StageResult("data"))
    with pytest.raises(RuntimeError), atomic_output(final, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("killed mid-write")
    assert (final / "v").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_folder_without_marker_is_incomplete(tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    (half / "part-00000.parquet").write_bytes(b"PAR1")
    assert not is_complete(half)
    with pytest.raises(ArtifactNotFoundError, match="incomplete"):
        require_complete(half)
    (half / "result.json").write_text("{truncated")
    assert not is_complete(half)
    with pytest.raises(ArtifactNotFoundError, match="does not exist"):
        require_complete(tmp_path / "missing")


def test_no_overwrite_of_complete_artifact(tmp_path):
    final = tmp_path / "out"
    with atomic_output(final) as tmp:
        finish_artifact(tmp, StageResult("data"))
    with pytest.raises(FileExistsError), atomic_output(final, overwrite=False):
        pass


def test_lineage_keeps_parents(tmp_path):
    write_lineage(tmp_path, stage="train", inputs={"dataset": "d"}, config={"lr": 1e-3}, metrics={"loss": 2.0})
    write_lineage(tmp_path, stage="prune", inputs={"model": "m"}, config={"sparsity": 0.5}, metrics={"ppl": 9.0})
    rec = json.loads((tmp_path / "aptops.json").read_text())
    assert rec["stage"] == "prune"
    assert rec["parents"][0]["stage"] == "train"
    assert rec["versions"]["python"]


def test_read_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(InvalidArtifactError, match=r"bad\.json"):
        read_json(bad)
