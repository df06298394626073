"""The real distributed path on one machine: two torchrun agents as two "nodes" (c10d rendezvous on 127.0.0.1,
gloo), each running the same ``aptops train run`` a Kubeflow Trainer node runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aptops.core.artifacts import is_complete, read_json
from tests.models import CORPUS
from tests.services.servers import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# every rank's Python file writes under the output, seen through the audit hook (open for writing, mkdir, rename,
# remove): safetensors writes from Rust, but only inside save_pretrained, which rank 0 alone calls
AUDIT = """
import os, sys
_out = os.environ["APTOPS_AUDIT_ROOT"]
_log = os.environ["APTOPS_AUDIT_LOG"]
def _hook(event, args):
    if event in ("open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree"):
        path = str(args[0]) if args else ""
        writes = event != "open" or (len(args) > 1 and isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
        if writes and path.startswith(_out) and os.environ.get("RANK", "0") != "0":
            with open(_log, "a") as fh:
                fh.write(f"{os.environ.get('RANK')} {event} {path}\\n")
sys.addaudithook(_hook)
"""


def _settings(steps: int, batch: int, save_steps: int = 2) -> list[str]:
    return ["--set", "block_size=32", "--set", "eval_fraction=0", "--set", f"training_args.max_steps={steps}",
            "--set", "training_args.use_cpu=true", "--set", "training_args.logging_steps=1",
            "--set", f"training_args.save_steps={save_steps}", "--set", "training_args.learning_rate=1e-3",
            "--set", f"training_args.per_device_train_batch_size={batch}"]


def _env(tmp_path: Path, out: Path) -> dict[str, str]:
    site = tmp_path / "audit"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(AUDIT)
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(site), "APTOPS_AUDIT_ROOT": str(out), "APTOPS_AUDIT_LOG": str(tmp_path / "writes.log")}


def _two_nodes(model: Path, data: Path, out: Path, tmp_path: Path, args: list[str], tag: str) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(
        [str(BIN / "torchrun"), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
         "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", tag, "--no-python",
         "aptops", "train", "run", str(model), str(data), "--out", str(out), *args],
        env=_env(tmp_path, out), stdout=(tmp_path / f"{tag}-node{i}.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True) for i in range(2)]


def _losses(out: Path) -> list[float]:
    return [h["loss"] for h in json.loads((out / "history.json").read_text()) if "loss" in h]


def _kill_node(agent: subprocess.Popen) -> None:
    """SIGKILL a torchrun agent and every process under it (its workers run in sessions of their own)."""
    import psutil

    tree = [psutil.Process(agent.pid), *psutil.Process(agent.pid).children(recursive=True)]
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


def _whole_checkpoints(out: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")
            if (p / "trainer_state.json").is_file()]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 4))
    return path


def test_two_nodes_train_like_one_process_at_the_same_global_batch(tiny_llama, corpus, tmp_path):
    one = tmp_path / "one"
    proc = subprocess.run([str(BIN / "aptops"), "train", "run", str(tiny_llama), str(corpus), "--out", str(one),
                           *_settings(6, batch=4)], env=_env(tmp_path, one), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = tmp_path / "two"
    nodes = _two_nodes(tiny_llama, corpus, two, tmp_path, _settings(6, batch=2), "same-batch")
    assert [n.wait(timeout=300) for n in nodes] == [0, 0], (tmp_path / "same-batch-node0.log").read_text()[-2000:]
    # 2 nodes x 2 sequences = one process x 4: the same blocks in each step, gradients averaged by DDP
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)
    metrics = read_json(two / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["tokens_seen"] == 6 * 2 * 2 * 32 and is_complete(two)
    writes = (tmp_path / "writes.log").read_text().splitlines() if (tmp_path / "writes.log").exists() else []
    # rank 1 writes only inside checkpoints (the Trainer saves each rank's RNG state, for an exact resume): never
    # the output folder itself, the model, the metrics or the result
    assert writes and all("/two/checkpoints/checkpoint-" in w for w in writes), writes
    assert not (two / "checkpoints").exists()
    logs = [(tmp_path / f"same-batch-node{i}.log").read_text() for i in range(2)]
    assert sum("trained model:" in text for text in logs) == 1  # one metrics table, from rank 0


def test_a_killed_node_and_a_restart_of_both_resume_from_the_newest_checkpoint(tiny_llama, corpus, tmp_path):
    out = tmp_path / "run"
    args = _settings(800, batch=2, save_steps=25)  # a step is ~10 ms: enough of them to land a kill mid-run
    nodes = _two_nodes(tiny_llama, corpus, out, tmp_path, args, "killed")
    deadline = time.monotonic() + 240
    while not _whole_checkpoints(out):  # the Trainer keeps the last two: poll for any, not for one step
        assert time.monotonic() < deadline and all(n.poll() is None for n in nodes), "no checkpoint in time"
        time.sleep(0.02)
    _kill_node(nodes[1])  # a node is lost: its agent and its workers
    survivor = "failed on its own"
    try:  # the survivor's collective fails, or it waits on its dead peer until the restart takes it down too
        nodes[0].wait(timeout=30)
    except subprocess.TimeoutExpired:
        _kill_node(nodes[0])  # what the JobSet does on a failed node: restart every node
        nodes[0].wait(timeout=30)
        survivor = "waited on its peer and was stopped"
    assert nodes[0].returncode != 0 and not is_complete(out)
    newest = max(_whole_checkpoints(out))
    nodes = _two_nodes(tiny_llama, corpus, out, tmp_path, args, "restarted")
    assert [n.wait(timeout=300) for n in nodes] == [0, 0], (tmp_path / "restarted-node0.log").read_text()[-2000:]
    metrics = read_json(out / "metrics.json")
    print(f"\nnode killed after checkpoint {newest}; the survivor {survivor}; resumed from {metrics['resumed_from_step']:.0f}")
    assert metrics["global_step"] == 800 and 25 <= newest < 800 and metrics["resumed_from_step"] == newest
    assert [h["step"] for h in json.loads((out / "history.json").read_text()) if "loss" in h] == list(range(1, 801))
    assert is_complete(out) and not (out / "checkpoints").exists()
