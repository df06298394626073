from __future__ import annotations

import json
from pathlib import Path

import pytest

from aptops.core.artifacts import output_policy
from aptops.core.config import load_config
from aptops.data import ProcessConfig, process_pipeline
from aptops.data.io import read_dataset

FORTUNES = Path("/usr/share/games/fortunes")


def _corpus(tmp_path: Path) -> Path:
    rows = []
    for cat in ("food", "pets"):
        records = [r.strip() for r in (FORTUNES / cat).read_text(encoding="utf-8").split("\n%\n") if r.strip()]
        rows += [{"text": r, "label": cat} for r in records[: (40 if cat == "food" else 10)]]
    rows.append(dict(rows[0]))  # an exact duplicate
    rows.append({"text": "see https://spam.example.com now", "label": "pets"})
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_full_process_counts_every_step(tmp_path):
    cfg = load_config(ProcessConfig, overrides=[
        "steps=[clean, dedup, augment, balance, quality]", "augment.num_augmented=1",
        "augment.methods=[random_swap]", "balance.target_ratio=1.0", "quality.action=filter",
        "quality.checks=[length]", "quality.min_chars=10",
    ])
    result = process_pipeline(_corpus(tmp_path), output_dir=tmp_path / "out", config=cfg)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    steps = {s["step"]: s for s in stats["steps"]}
    assert list(steps) == ["clean", "dedup", "augment", "balance", "quality"]
    assert steps["clean"]["why"]["urls_removed"] == 1
    assert steps["dedup"]["removed"] == 1 and steps["dedup"]["why"]["duplicates_removed"] == 1
    assert steps["augment"]["rows_out"] == 2 * steps["augment"]["rows_in"]
    balanced = read_dataset(Path(stats["intermediate"]) / "04-balance").column("label").to_pylist()
    assert balanced.count("food") == balanced.count("pets")
    labels = read_dataset(tmp_path / "out").column("label").to_pylist()
    assert steps["quality"]["removed"] >= 1  # "see now" is too short after cleaning
    assert result.metrics["rows_out"] == len(labels)
    assert (tmp_path / "out" / "process.log").read_text().count("step ") >= 5


def test_resume_reuses_complete_steps(tmp_path):
    raw = _corpus(tmp_path)
    process_pipeline(raw, output_dir=tmp_path / "out", config=ProcessConfig(steps=("clean", "dedup")))
    raw.write_text('{"text": "different now", "label": "x"}\n')
    with pytest.raises(FileExistsError, match="--overwrite"):  # a finished output is replaced only when asked
        process_pipeline(raw, output_dir=tmp_path / "out", config=ProcessConfig(steps=("clean", "dedup")))
    with output_policy(overwrite=True):
        again = process_pipeline(raw, output_dir=tmp_path / "out", config=ProcessConfig(steps=("clean", "dedup")))
    assert again.metrics["clean_rows_out"] > 1  # the complete clean step was reused, not recomputed
    fresh = process_pipeline(raw, output_dir=tmp_path / "out2", config=ProcessConfig(steps=("clean", "dedup"), resume=False))
    assert fresh.metrics["rows_out"] == 1


def test_the_old_signature_is_a_wrapper_over_the_contract(tmp_path, monkeypatch):
    from aptops.data import legacy
    from aptops.plugins import get_adapter

    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder
    old = get_adapter("data_processors").get_legacy_plugin().process_pipeline
    assert old is legacy.process_pipeline
    raw = _corpus(tmp_path)
    at = old(raw, tmp_path / "out", ProcessConfig(steps=("clean",)))
    assert at.outputs["dataset"] == str(tmp_path / "out")
    before = set(tmp_path.iterdir())
    anywhere = old(raw)
    assert Path(anywhere.outputs["dataset"]).is_dir() and set(tmp_path.iterdir()) == before
    assert anywhere.metrics["rows_out"] == at.metrics["rows_out"] - 1  # dedup removed the exact duplicate
