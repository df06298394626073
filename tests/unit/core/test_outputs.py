"""Outputs never destroy what aptops did not make: a user's folder, an input, another kind of artifact, or
another process's output in progress. Each case was a silent deletion with exit 0 before (issue 32)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from aptops.core.artifacts import (
    IN_PROGRESS_FILE,
    StageResult,
    atomic_output,
    check_output,
    finish_artifact,
    is_complete,
    output_policy,
    writing_in_place,
)
from aptops.core.errors import OutputExistsError
from tests.cli import aptops


def _artifact(folder: Path, stage: str = "data", content: str = "1") -> Path:
    with atomic_output(folder, overwrite=True) as tmp:
        (tmp / "v").write_text(content)
        finish_artifact(tmp, StageResult(stage))
    return folder


def _users_folder(root: Path) -> Path:
    projects = root / "projects"
    (projects / "thesis").mkdir(parents=True)
    (projects / "thesis" / "chapter1.tex").write_text("years of work")
    return projects


def test_a_folder_of_user_files_is_never_replaced(tmp_path):
    projects = _users_folder(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=r"holds files aptops did not make .*'thesis'"), \
                atomic_output(projects, overwrite=overwrite) as tmp:
            finish_artifact(tmp, StageResult("data"))
    assert (projects / "thesis" / "chapter1.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["projects"]  # no temp folder or lock left


def test_a_file_at_the_output_is_refused(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "x"}\n')
    with pytest.raises(OutputExistsError, match="is a file"), atomic_output(corpus, overwrite=True):
        pass
    assert corpus.read_text() == '{"text": "x"}\n'


def test_a_symlink_at_the_output_is_refused(tmp_path):
    target = _artifact(tmp_path / "real")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OutputExistsError, match="symbolic link"):
        check_output(tmp_path / "link", overwrite=True)


def test_an_empty_folder_or_a_new_path_is_written(tmp_path):
    (tmp_path / "empty").mkdir()
    for name in ("empty", "new/deeper"):
        _artifact(tmp_path / name)
        assert is_complete(tmp_path / name)


def test_an_artifact_is_replaced_only_with_overwrite_and_only_by_its_kind(tmp_path):
    out = _artifact(tmp_path / "out", stage="data", content="old")
    with pytest.raises(OutputExistsError, match="pass --overwrite"), atomic_output(out) as tmp:
        pass
    with pytest.raises(OutputExistsError, match="'data' artifact, not a 'export' one"), \
            atomic_output(out, overwrite=True) as tmp:
        (tmp / "v").write_text("new")
        finish_artifact(tmp, StageResult("export"))
    assert (out / "v").read_text() == "old"
    with output_policy(overwrite=True), atomic_output(out) as tmp:  # the CLI's --overwrite reaches every output
        (tmp / "v").write_text("new")
        finish_artifact(tmp, StageResult("data"))
    assert (out / "v").read_text() == "new"


def test_outputs_that_are_or_hold_or_lie_inside_an_input_are_refused(tmp_path):
    model = _artifact(tmp_path / "runs" / "model", stage="train")
    cases = {model: "is the input", tmp_path / "runs": "contains the input", model / "gguf": "lies inside the input"}
    for out, words in cases.items():
        with pytest.raises(OutputExistsError, match=words):
            check_output(out, overwrite=True, inputs=[str(model)])
        with output_policy(overwrite=True, inputs=[model]), pytest.raises(OutputExistsError, match=words), \
                atomic_output(out):
            pass
    check_output(tmp_path / "elsewhere", inputs=[str(model), "s3://bucket/model", "HuggingFaceTB/SmolLM2"])


def _hold(folder: str, ready, release) -> None:  # pragma: no cover - runs in a child process
    with atomic_output(folder) as tmp:
        (tmp / "v").write_text("first")
        ready.set()
        release.wait(60)
        finish_artifact(tmp, StageResult("data"))


def _first_writer(out: Path):
    """A child process inside ``atomic_output(out)``, waiting there until its ``release`` event is set."""
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    first = ctx.Process(target=_hold, args=(str(out), ready, release))
    first.start()
    assert ready.wait(120)
    return first, release


def test_a_second_writer_of_the_same_output_fails_clearly(tmp_path):
    out = tmp_path / "out"
    first, release = _first_writer(out)
    try:
        with pytest.raises(OutputExistsError, match="being written by another process"), \
                atomic_output(out) as tmp:
            (tmp / "v").write_text("second")
            finish_artifact(tmp, StageResult("data"))
    finally:
        release.set()
        first.join(120)
    assert first.exitcode == 0
    assert (out / "v").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_writer_killed_while_holding_the_lock_does_not_block_the_next(tmp_path):
    out = tmp_path / "out"
    first, _ = _first_writer(out)
    first.kill()
    first.join(60)
    _artifact(out, content="after the kill")  # the kernel dropped the dead writer's lock
    assert (out / "v").read_text() == "after the kill"


def test_writing_in_place_resumes_its_own_unfinished_folder_and_nothing_else(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError), writing_in_place(out, stage="train") as folder:
        (folder / "checkpoints").mkdir()
        raise RuntimeError("killed mid-training")
    assert json.loads((out / IN_PROGRESS_FILE).read_text())["stage"] == "train"
    with pytest.raises(OutputExistsError, match="'train' artifact, not a 'distill' one"):
        check_output(out, kind="distill", resume=True)
    with writing_in_place(out, stage="train") as folder:  # the rerun resumes without --overwrite
        assert (folder / "checkpoints").is_dir()
        finish_artifact(folder, StageResult("train"))
    assert is_complete(out) and not (out / IN_PROGRESS_FILE).exists()
    with pytest.raises(OutputExistsError, match="pass --overwrite"), writing_in_place(out, stage="train"):
        pass
    assert is_complete(out)  # the refused rerun left the finished model as it was
    projects = _users_folder(tmp_path)
    with pytest.raises(OutputExistsError, match="did not make"), writing_in_place(projects, stage="train"):
        pass


# --- the commands, as a careless user types them -------------------------------------------------------------

def test_cli_data_clean_refuses_a_folder_of_user_files_and_the_folder_of_its_input(tmp_path):
    projects = _users_folder(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    corpus = data / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"line number {i} of the corpus"}) + "\n" for i in range(20)))
    for out in (projects, data):
        proc = aptops("data", "clean", str(corpus), "--out", str(out), "--overwrite")
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        assert "aptops did not make" in proc.stderr + proc.stdout or "contains the input" in proc.stderr + proc.stdout
    assert (projects / "thesis" / "chapter1.tex").read_text() == "years of work"
    assert corpus.is_file()
    ok = aptops("data", "clean", str(corpus), "--out", str(tmp_path / "clean"))
    assert ok.returncode == 0, ok.stderr
    again = aptops("data", "clean", str(corpus), "--out", str(tmp_path / "clean"))
    assert again.returncode != 0 and "--overwrite" in again.stderr + again.stdout
    replaced = aptops("data", "clean", str(corpus), "--out", str(tmp_path / "clean"), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr


def test_cli_export_refuses_to_write_over_the_model_it_exports(tmp_path, tiny_llama):
    import shutil

    model = Path(shutil.copytree(tiny_llama, tmp_path / "model"))
    before = sorted(os.listdir(model))
    proc = aptops("export", "gguf", str(model), "--out", str(model), "--overwrite")
    assert proc.returncode != 0
    assert "is the input" in proc.stderr + proc.stdout
    assert sorted(os.listdir(model)) == before


def test_cli_train_refuses_a_folder_of_user_files_before_loading_anything(tmp_path, tiny_llama):
    projects = _users_folder(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("hello world\n" * 50)
    proc = aptops("train", "run", str(tiny_llama), str(text), "--out", str(projects))
    assert proc.returncode != 0
    assert "aptops did not make" in proc.stderr + proc.stdout
    assert sorted(p.name for p in projects.iterdir()) == ["thesis"]


def test_two_commands_writing_one_output_at_once_one_wins_the_other_says_why(tmp_path):
    """Issue 32: two exports into one --out both exited 0 and one artifact was lost; a concurrent `data clean`
    died with a raw ENOTEMPTY and left its output in a hidden temp folder."""
    import subprocess

    from tests.cli import APTOPS

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"line {i} " + "word " * (i % 50)}) + "\n" for i in range(3000)))
    out = tmp_path / "clean"
    env = {**os.environ, "COLUMNS": "200"}
    procs = [subprocess.Popen([APTOPS, "data", "clean", str(corpus), "--out", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for code, err in results if code != 0)
    assert "Traceback" not in loser and ("being written by another process" in loser or "--overwrite" in loser)
    assert is_complete(out)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".metrics")) == ["clean", "corpus.jsonl"]
