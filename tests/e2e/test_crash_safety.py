"""Crash safety: a stage killed with SIGKILL at a random moment never leaves something that reads as complete,
and running it again finishes.

Each command is killed at several random points of its measured duration (seeded, so a failure reproduces);
after every kill the output either does not exist, or has no ``result.json`` and is refused by
``require_complete`` — or the kill came after the final rename and the artifact is whole. Then the same
command runs to the end and its artifact verifies.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from aptops.core.artifacts import is_complete, require_complete
from aptops.core.errors import ArtifactNotFoundError
from tests.cli import APTOPS
from tests.models import CORPUS

KILLS = 4


def _corpus(path: Path, rows: int = 40_000) -> Path:
    rng = random.Random(3)
    words = ["model", "data", "token", "train", "shard", "clean", "near", "duplicate", "quality", "metric", "loss"]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps({"text": f"{i} " + " ".join(rng.choice(words) for _ in range(30))}) + "\n")
    return path


def _model_folder(path: Path) -> Path:
    path.mkdir()
    rng = random.Random(5)
    for i in range(6):
        (path / f"model-{i:05d}-of-00006.safetensors").write_bytes(rng.randbytes(8 * 2**20))
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


ENV: dict[str, str] = {}


def _run(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([APTOPS, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "APTOPS_NO_PROGRESS": "1", **ENV}, start_new_session=True)


def _check_after_kill(out: Path, model: Path | None) -> str:
    if not out.exists():
        return "absent"
    if model is not None:  # a restore swaps the folder in only once every file verified: all or nothing
        assert _same_files(model, out), "a killed restore left a partial model folder in place"
        return "complete"
    if is_complete(out):
        require_complete(out)  # a complete one must read as complete
        return "complete"
    with pytest.raises(ArtifactNotFoundError, match="incomplete"):
        require_complete(out)
    return "partial"


def _same_files(model: Path, out: Path) -> bool:
    return all((out / f.name).is_file() and (out / f.name).read_bytes() == f.read_bytes() for f in model.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("case", ["data-clean", "backup-restore", "export-gguf", "prune"])
def test_killed_stage_never_leaves_a_complete_looking_partial_and_reruns(case, tmp_path, s3_server, monkeypatch,
                                                                         request):
    monkeypatch.setitem(ENV, "AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setitem(ENV, "AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setitem(ENV, "AWS_ENDPOINT_URL", s3_server.endpoint)
    model = None
    if case == "data-clean":
        source = _corpus(tmp_path / "corpus.jsonl")
        out = tmp_path / "clean"
        args = ["data", "clean", str(source), "--out", str(out)]
        verify = ["data", "stats", str(out), "--out", str(tmp_path / "stats")]
    elif case == "export-gguf":  # convert, quantize, verify against transformers: killed anywhere in between
        out = tmp_path / "gguf"
        args = ["export", "gguf", str(request.getfixturevalue("tiny_llama")), "--out", str(out), "--set",
                "quantization=Q8_0"]
        verify = None
    elif case == "prune":  # calibrate, prune, fine-tune with masks, measure: restarted whole after a kill
        text = tmp_path / "text.jsonl"
        text.write_text("".join(json.dumps({"text": f"{i}: {t}"}) + "\n" for i, t in enumerate(CORPUS * 2)))
        out = tmp_path / "pruned"
        args = ["prune", "run", str(request.getfixturevalue("tiny_llama")), str(text), "--out", str(out), "--set",
                "training.block_size=16", "--set", "training.training_args.max_steps=30",
                "--set", "training.training_args.use_cpu=true"]
        verify = None
    else:
        model = _model_folder(tmp_path / "model")
        store = f"s3://crash-{os.getpid()}-{random.randrange(10**6)}/model"
        done = _run(["backup", str(model), "--to", store], tmp_path)
        assert done.wait(timeout=600) == 0, done.stderr.read().decode()[-2000:]
        out = tmp_path / "restored"
        args = ["restore", store, "--out", str(out)]
        verify = None
    started = time.monotonic()
    full = _run(args, tmp_path)
    assert full.wait(timeout=600) == 0, full.stderr.read().decode()[-2000:]
    duration = time.monotonic() - started

    def finished() -> bool:
        return _same_files(model, out) if model is not None else is_complete(out)

    assert finished()
    rng = random.Random(11)
    seen = []
    for _ in range(KILLS):
        subprocess.run(["rm", "-rf", str(out)], check=True)
        proc = _run(args, tmp_path)
        time.sleep(rng.uniform(0.2, 0.95) * duration)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        seen.append(_check_after_kill(out, model))
        # the next run (over whatever the kill left) finishes and is whole
        again = _run(args, tmp_path)
        assert again.wait(timeout=600) == 0, again.stderr.read().decode()[-2000:]
        assert finished()
    if verify:
        assert subprocess.run([APTOPS, *verify], capture_output=True, cwd=tmp_path).returncode == 0
    if case == "export-gguf":
        from aptops.export.convert import read_gguf

        assert read_gguf(out / "model-Q8_0.gguf").tensors and (out / "verify.json").is_file()
    print(f"\n{case}: {KILLS} kills, states after the kill: {seen}")
    assert "partial" in seen or "absent" in seen  # the kills did land while it was working


def _checkpoints(out: Path) -> list[int]:
    folder = out / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")) if folder.is_dir() else []


def _kill_after_checkpoints(args: list[str], out: Path, cwd: Path, *, kills: int, seed: int,
                            window_s: float) -> list[int]:
    """Run ``args`` ``kills`` times, each SIGKILLed within ``window_s`` of writing a newer checkpoint (some kills
    land inside the next checkpoint's write), checking the output reads as incomplete after each; then run it to
    the end. Returns the newest checkpoint step left after each kill."""
    rng = random.Random(seed)
    resumed: list[int] = []
    for _ in range(kills):
        before = max(_checkpoints(out), default=0)
        proc = _run(args, cwd)
        deadline = time.monotonic() + 300
        while max(_checkpoints(out), default=0) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        time.sleep(rng.uniform(0.0, window_s))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert not is_complete(out)
        with pytest.raises(ArtifactNotFoundError, match="incomplete"):
            require_complete(out)
        resumed.append(max(_checkpoints(out)))
    final = _run(args, cwd)
    assert final.wait(timeout=600) == 0, final.stderr.read().decode()[-3000:]
    require_complete(out)
    return resumed


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "distill"])
def test_training_killed_mid_epoch_resumes_from_its_last_whole_checkpoint(stage, tiny_llama, tmp_path):
    """SIGKILL a training (or distillation) run at random moments after each new checkpoint (some kills land
    while a checkpoint is being written); each time the output reads as incomplete, and the next run resumes
    from the newest checkpoint that was written to the end, until one finishes all its steps."""
    from aptops.data import CleanConfig, clean_dataset

    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": f"{i}: {t}"}) + "\n" for i, t in enumerate(CORPUS * 4)))
    clean_dataset(raw, output_dir=tmp_path / "clean", config=CleanConfig())
    out = tmp_path / "trained"
    steps = 300  # a tiny model runs dozens of steps a second: enough that no run ends before its kill
    train = "training." if stage == "distill" else ""  # distill nests the train settings
    settings = ["block_size=16", "eval_fraction=0", f"training_args.max_steps={steps}", "training_args.save_steps=10",
                "training_args.use_cpu=true", "training_args.per_device_train_batch_size=2",
                "training_args.learning_rate=1e-3"]
    args = [stage, "run", str(tiny_llama), str(tmp_path / "clean"), "--out", str(out),
            *[arg for s in settings for arg in ("--set", train + s)]]
    resumed = _kill_after_checkpoints(args, out, tmp_path, kills=3, seed=17, window_s=0.6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == steps and metrics["resumed_from_step"] >= 10
    print(f"\n{stage}: 3 kills, newest checkpoint after each: {resumed}, final run resumed from step "
          f"{int(metrics['resumed_from_step'])}")


@pytest.mark.slow
def test_multimodal_training_killed_after_an_epoch_resumes_from_its_checkpoint(tmp_path):
    """The multimodal stage (image + audio of the sample task) SIGKILLed twice after a new epoch checkpoint: the
    output reads as incomplete each time and the next run resumes from the newest whole checkpoint."""
    from aptops.multimodal.samples import build_sample_task

    task = build_sample_task(tmp_path / "task", classes=3, train_per_class=12, eval_per_class=4, image_size=32,
                             seed=2)
    out = tmp_path / "mm"
    args = ["multimodal", "train", str(task / "train.jsonl"), "--eval", str(task / "eval.jsonl"), "--out", str(out),
            "--set", "modalities=[image,audio]", "--set", "epochs=10", "--set", "hidden_size=32"]
    resumed = _kill_after_checkpoints(args, out, tmp_path, kills=2, seed=23, window_s=0.5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= resumed[0] and not (out / "checkpoints").exists()
    print(f"\nmultimodal: 2 kills, newest checkpoint after each: {resumed}, final run resumed from step "
          f"{int(metrics['resumed_from_step'])}")
