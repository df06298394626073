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
        args = ["data", "clean", str(source), "--out", str(out), "--overwrite"]  # a kill may land after the swap
        verify = ["data", "stats", str(out), "--out", str(tmp_path / "stats")]
    elif case == "export-gguf":  # convert, quantize, verify against transformers: killed anywhere in between
        out = tmp_path / "gguf"
        args = ["export", "gguf", str(request.getfixturevalue("tiny_llama")), "--out", str(out), "--set",
                "quantization=Q8_0", "--overwrite"]
        verify = None
    elif case == "prune":  # calibrate, prune, fine-tune with masks, measure: restarted whole after a kill
        text = tmp_path / "text.jsonl"
        text.write_text("".join(json.dumps({"text": f"{i}: {t}"}) + "\n" for i, t in enumerate(CORPUS * 2)))
        out = tmp_path / "pruned"
        args = ["prune", "run", str(request.getfixturevalue("tiny_llama")), str(text), "--out", str(out), "--set",
                "training.block_size=16", "--set", "training.training_args.max_steps=15",
                "--set", "training.training_args.use_cpu=true", "--overwrite"]
        verify = None
    else:
        model = _model_folder(tmp_path / "model")
        store = f"s3://crash-{os.getpid()}-{random.randrange(10**6)}/model"
        done = _run(["backup", str(model), "--to", store], tmp_path)
        assert done.wait(timeout=600) == 0, done.stderr.read().decode()[-2000:]
        out = tmp_path / "restored"
        args = ["restore", store, "--out", str(out), "--overwrite"]  # a kill may land after the swap-in
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
        # the next run (over whatever the kill left: with --overwrite, a finished artifact of its own kind too)
        # finishes and is whole
        again = _run(args, tmp_path)
        assert again.wait(timeout=600) == 0, again.stderr.read().decode()[-2000:]
        assert finished()
    if verify:
        assert subprocess.run([APTOPS, *verify], capture_output=True, cwd=tmp_path).returncode == 0
    if case == "export-gguf":
        from aptops.lm.gguf import read_gguf

        assert read_gguf(out / "model-Q8_0.gguf").tensors and (out / "verify.json").is_file()
    print(f"\n{case}: {KILLS} kills, states after the kill: {seen}")
    assert "partial" in seen or "absent" in seen  # the kills did land while it was working


def _checkpoints(out: Path) -> list[int]:
    folder = out / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")) if folder.is_dir() else []


def _kill_and_resume(args: list[str], out: Path, cwd: Path, *, kills: int, seed: int, window_s: float,
                     anytime_s: tuple[float, float]) -> list[tuple[str, int]]:
    """Run ``args`` ``kills`` times and SIGKILL each run at a seeded moment, of one of two kinds: any moment
    (``anytime_s`` after it started: loading, tokenising or mid-step) or within ``window_s`` of its writing a
    newer checkpoint (some land inside the next checkpoint's write); at least one of each. After each kill the
    output is absent or reads as incomplete; then the run goes to the end. Returns the kind of each kill and the
    newest checkpoint step left after it."""
    rng = random.Random(seed)
    kinds = ["anytime", "after-checkpoint"] + [rng.choice(["anytime", "after-checkpoint"]) for _ in range(kills - 2)]
    rng.shuffle(kinds)
    left: list[tuple[str, int]] = []
    for kind in kinds:
        before = max(_checkpoints(out), default=0)
        proc = _run(args, cwd)
        if kind == "anytime":
            deadline = time.monotonic() + rng.uniform(*anytime_s)
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            deadline = time.monotonic() + 300
            while max(_checkpoints(out), default=0) <= before and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, window_s))
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        if out.exists():
            assert not is_complete(out)
            with pytest.raises(ArtifactNotFoundError, match="incomplete"):
                require_complete(out)
        left.append((kind, max(_checkpoints(out), default=0)))
    final = _run(args, cwd)
    assert final.wait(timeout=600) == 0, final.stderr.read().decode()[-3000:]
    require_complete(out)
    return left


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "distill"])
def test_training_killed_mid_epoch_resumes_from_its_last_whole_checkpoint(stage, tiny_llama, tmp_path):
    """SIGKILL a training (or distillation) run at seeded random moments: anywhere in its run, and just after a
    new checkpoint (some kills land while a checkpoint is being written); each time the output is absent or reads
    as incomplete, and the next run resumes from the newest checkpoint that was written to the end, until one
    finishes all its steps."""
    from aptops.data import CleanConfig, clean_dataset

    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": f"{i}: {t}"}) + "\n" for i, t in enumerate(CORPUS * 4)))
    clean_dataset(raw, output_dir=tmp_path / "clean", config=CleanConfig())
    out = tmp_path / "trained"
    steps = 800  # a tiny model runs ~100 steps a second on a free machine: enough that no run ends before its kill
    train = "training." if stage == "distill" else ""  # distill nests the train settings
    settings = ["block_size=16", "eval_fraction=0", f"training_args.max_steps={steps}", "training_args.save_steps=10",
                "training_args.use_cpu=true", "training_args.per_device_train_batch_size=2",
                "training_args.learning_rate=1e-3"]
    args = [stage, "run", str(tiny_llama), str(tmp_path / "clean"), "--out", str(out),
            *[arg for s in settings for arg in ("--set", train + s)]]
    resumed = _kill_and_resume(args, out, tmp_path, kills=4, seed=17, window_s=0.6, anytime_s=(1.0, 4.5))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == steps and metrics["resumed_from_step"] >= 10
    print(f"\n{stage}: kills (kind, newest checkpoint after it): {resumed}, final run resumed from step "
          f"{int(metrics['resumed_from_step'])}")


@pytest.mark.slow
def test_multimodal_training_killed_after_an_epoch_resumes_from_its_checkpoint(tmp_path):
    """The multimodal stage (image + audio of the sample task) SIGKILLed at seeded moments, anywhere and just
    after a new epoch checkpoint: the output is absent or reads as incomplete each time and the next run resumes
    from the newest whole checkpoint."""
    from aptops.multimodal.samples import build_sample_task

    task = build_sample_task(tmp_path / "task", classes=3, train_per_class=12, eval_per_class=4, image_size=32,
                             seed=2)
    out = tmp_path / "mm"
    args = ["multimodal", "train", str(task / "train.jsonl"), "--eval", str(task / "eval.jsonl"), "--out", str(out),
            "--set", "modalities=[image,audio]", "--set", "epochs=10", "--set", "hidden_size=32"]
    resumed = _kill_and_resume(args, out, tmp_path, kills=3, seed=23, window_s=0.5, anytime_s=(1.0, 6.0))
    metrics = json.loads((out / "metrics.json").read_text())
    # the newest checkpoint a kill left may be one it cut short: the run resumes from the newest whole one
    steps_left = [step for _, step in resumed if step > 0]
    assert steps_left and steps_left[0] <= metrics["resumed_from_step"] <= max(steps_left)
    assert not (out / "checkpoints").exists()
    print(f"\nmultimodal: kills (kind, newest checkpoint after it): {resumed}, final run resumed from step "
          f"{int(metrics['resumed_from_step'])}")


def _big_model(tiny_llama: Path, path: Path, mib: int = 48, seed: int = 7) -> Path:
    """The tiny model plus a large second weights file (valid safetensors): enough bytes that a kill lands while
    they are in flight."""
    import shutil

    import torch
    from safetensors.torch import save_file

    shutil.copytree(tiny_llama, path)
    generator = torch.Generator().manual_seed(seed)
    save_file({"extra.weight": torch.randn(mib * 2**18, generator=generator)}, path / "extra.safetensors")
    return path


def _restore_state(store: str, model_v1: Path, model_v2: Path, out: Path) -> str:
    """What a restore of ``store`` gives now: v1 or v2 exactly, or a refusal; never another model."""
    run = subprocess.run([APTOPS, "restore", store, "--out", str(out)], capture_output=True, text=True,
                         env={**os.environ, "APTOPS_NO_PROGRESS": "1", **ENV}, timeout=600)
    if run.returncode != 0:
        assert not out.exists(), "a refused restore left a folder behind"
        assert "no source could restore a verified copy" in run.stderr, run.stderr[-2000:]
        return "refused"
    for name, model in (("v1", model_v1), ("v2", model_v2)):
        if sorted(p.name for p in out.iterdir() if p.name != "manifest.json") == sorted(
                p.name for p in model.iterdir()) and _same_files(model, out):
            return name
    raise AssertionError("a restore after a killed backup gave neither the old nor the new model")


@pytest.mark.slow
def test_backup_killed_in_flight_never_restores_a_wrong_model_and_the_rerun_finishes(tiny_llama, tmp_path, s3_server,
                                                                                    monkeypatch):
    """SIGKILL `aptops backup` at seeded moments while a new version of a model is uploaded over the last one:
    a restore then gives the last complete version or refuses (objects of the new one already replaced some
    of the old) and says why; never a mix. The rerun (the killed run's lease is taken over at once: its
    process is gone) finishes, and the restore is byte-identical."""
    monkeypatch.setitem(ENV, "AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setitem(ENV, "AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setitem(ENV, "AWS_ENDPOINT_URL", s3_server.endpoint)
    v1 = _big_model(tiny_llama, tmp_path / "v1")
    store = f"s3://kill-{os.getpid()}-{random.randrange(10**6)}/model"
    first = _run(["backup", str(v1), "--to", store], tmp_path)
    assert first.wait(timeout=600) == 0, first.stderr.read().decode()[-2000:]
    v2 = _big_model(tiny_llama, tmp_path / "v2", mib=40)
    args = ["backup", str(v2), "--to", store, "--set", "part_size_mb=5", "--set", "reuse_hashes=false"]
    started = time.monotonic()
    timing = _run(args, tmp_path)
    assert timing.wait(timeout=600) == 0, timing.stderr.read().decode()[-2000:]
    duration = time.monotonic() - started
    rng = random.Random(29)
    seen = []
    for i in range(3):  # each time: v1 backed up whole, then the v1 -> v2 update killed in flight
        back_to_v1 = _run(["backup", str(v1), "--to", store], tmp_path)
        assert back_to_v1.wait(timeout=600) == 0, back_to_v1.stderr.read().decode()[-2000:]
        proc = _run(args, tmp_path)
        time.sleep(rng.uniform(0.3, 0.95) * duration)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        seen.append(_restore_state(store, v1, v2, tmp_path / f"after-kill-{i}"))
    again = _run(args, tmp_path)
    assert again.wait(timeout=600) == 0, again.stderr.read().decode()[-2000:]
    assert _restore_state(store, v1, v2, tmp_path / "final") == "v2"
    print(f"\nbackup: 3 kills, a restore after each gave: {seen}")


@pytest.mark.slow
def test_seaweedfs_killed_and_restarted_during_a_backup_the_rerun_restores_byte_identical(tiny_llama, tmp_path):
    """The S3 server itself dies (SIGKILL) in the middle of a backup and comes back on the same data: the
    backup retries or fails clearly, a rerun finishes, and the restore is byte-identical."""
    from tests.services.servers import start_seaweedfs

    s3 = start_seaweedfs(tmp_path / "seaweedfs")
    try:
        env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
               "AWS_ENDPOINT_URL": s3.endpoint}
        model = _big_model(tiny_llama, tmp_path / "model", mib=64)
        store = "s3://restart/model"
        args = ["backup", str(model), "--to", store, "--set", "part_size_mb=5", "--set", "max_retries=8",
                "--set", "backoff_s=0.5"]
        proc = subprocess.Popen([APTOPS, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "APTOPS_NO_PROGRESS": "1", **env}, start_new_session=True)
        time.sleep(random.Random(31).uniform(2.5, 4.0))  # past start-up: parts are in flight
        os.killpg(s3.server.proc.pid, signal.SIGKILL)
        s3.server.proc.wait(timeout=30)
        time.sleep(1.0)
        s3.server.start(timeout_s=90)
        first_rc = proc.wait(timeout=600)
        rerun = subprocess.run([APTOPS, *args], cwd=tmp_path, capture_output=True, text=True,
                               env={**os.environ, "APTOPS_NO_PROGRESS": "1", **env}, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        back = subprocess.run([APTOPS, "restore", store, "--out", str(tmp_path / "back")], capture_output=True,
                              text=True, env={**os.environ, "APTOPS_NO_PROGRESS": "1", **env}, timeout=600)
        assert back.returncode == 0, back.stderr[-3000:]
        assert _same_files(model, tmp_path / "back")
        print(f"\nseaweedfs restart: the backup in flight exited {first_rc}; the rerun restored byte-identical")
    finally:
        s3.server.stop()


@pytest.mark.slow
def test_hub_publish_killed_in_flight_leaves_no_partial_commit_and_the_rerun_finishes(tiny_llama, tmp_path, hub,
                                                                                      monkeypatch):
    """SIGKILL `aptops hub export` at seeded moments while its weights go up: the repo then holds no commit or a
    whole one (a commit is atomic on the Hub: LFS objects first, the commit last), and the rerun publishes
    a byte-identical model."""
    monkeypatch.setitem(ENV, "HF_ENDPOINT", hub.endpoint)
    monkeypatch.setitem(ENV, "HF_TOKEN", hub.token)
    monkeypatch.setattr(hub.state, "upload_bytes_per_s", 24 * 2**20)  # a link slow enough to be cut mid-upload
    # every publish carries new weights: the Hub stores LFS objects by content, so a repeat would upload nothing
    timing_model = _big_model(tiny_llama, tmp_path / "timing", mib=64, seed=100)
    started = time.monotonic()
    timing = _run(["hub", "export", str(timing_model), f"{hub.user}/timing"], tmp_path)
    assert timing.wait(timeout=600) == 0, timing.stderr.read().decode()[-2000:]
    duration = time.monotonic() - started
    rng = random.Random(37)
    seen = []
    for i in range(3):
        model = _big_model(tiny_llama, tmp_path / f"model-{i}", mib=64, seed=101 + i)
        repo = f"{hub.user}/killed-{i}"
        args = ["hub", "export", str(model), repo]
        proc = _run(args, tmp_path)
        time.sleep(rng.uniform(0.4, 0.97) * duration)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        try:
            files = hub.files(repo)
        except Exception:  # the repo was not even created
            files = {}
        weights = {n: b for n, b in files.items() if n.endswith(".safetensors")}
        if weights:
            assert all(weights[p.name] == p.read_bytes() for p in model.glob("*.safetensors")), "a partial commit"
        seen.append("whole" if weights else "none")
        again = _run(args, tmp_path)
        assert again.wait(timeout=600) == 0, again.stderr.read().decode()[-2000:]
        published = hub.files(repo)
        assert all(published[p.name] == p.read_bytes() for p in model.iterdir() if p.suffix in (".safetensors", ".json")
                   and p.name != "aptops.json")
    print(f"\nhub publish: a publish takes {duration:.1f} s; 3 kills, the repo after each held: {seen}")
