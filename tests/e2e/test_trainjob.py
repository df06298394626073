"""Distributed training as a Kubeflow Trainer TrainJob, end to end on one machine.

The real ``train_model`` component body runs as the launcher a cluster file makes of it; the real ``kubernetes``
client talks to the Trainer API stand-in (``tests/services/trainer_api.py``), which parses each TrainJob strictly
with the ``kubeflow-trainer-api`` models and runs it like the torch runtime: one torchrun agent per node with
the ``PET_*`` rendezvous variables, the cache volume's mount path being a local folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aptops.core.artifacts import is_complete, read_json
from aptops.core.errors import PipelineError
from tests.models import CORPUS
from tests.services.trainer_api import TrainerApiStandIn

pytest.importorskip("kubeflow_trainer_api")
kfp = pytest.importorskip("kfp")

from aptops.cluster.settings import ClusterSettings  # noqa: E402


class _Art:
    """What the KFP executor hands a component body for an artifact: a path, metadata, metrics."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.metadata: dict = {}
        self.logged: dict = {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value


def _cluster(tmp_path: Path, **trainjob) -> ClusterSettings:
    job = {"enabled": True, "num_nodes": 2, "gpus_per_node": 0, "poll_seconds": 0.3, "timeout_minutes": 10, **trainjob}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({
        "images": {"registry": "registry.example.com/ml", "tag": "1.2.3", "pull_secrets": ["regcred"]},
        "pools": {"gpu": {"node_selector": {"pool": "gpu"}, "tolerations": ["nvidia.com/gpu:NoSchedule"]}},
        "resources": {"train": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}},
        "credentials": {"hf": "hf-token"},
        "cache": {"pvc": "aptops-cache", "mount_path": str(tmp_path / "cache")},
        "trainjob": job,
    }))
    return ClusterSettings.from_file(path)


def _launch(tmp_path: Path, monkeypatch, api: TrainerApiStandIn, settings: ClusterSettings, model: Path) -> dict:
    from aptops_components.train import train_model

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 2))
    monkeypatch.setenv("APTOPS_TRAINJOB", settings.trainjob_launch("train").to_json())
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.setenv("APTOPS_METRICS_DIR", str(tmp_path / "prom"))
    outs = {name: _Art(tmp_path / "outputs" / name) for name in ("trained", "heldout", "report", "debug_report", "metrics")}
    (tmp_path / "outputs").mkdir()
    train_model.python_func(
        model=_Art(model), dataset=_Art(data), block_size=32, max_steps=4, batch_size=2, eval_fraction=0.1,
        training_args='{"use_cpu": true, "logging_steps": 1, "save_steps": 2}', **outs)
    return outs


@pytest.mark.slow
def test_a_training_task_runs_as_a_two_node_trainjob_and_hands_the_model_on(tiny_llama, tmp_path, monkeypatch):
    settings = _cluster(tmp_path)
    with TrainerApiStandIn(tmp_path) as api:
        outs = _launch(tmp_path, monkeypatch, api, settings, tiny_llama)
        (job,) = api.state.created  # parsed strictly by the stand-in with the kubeflow-trainer-api models
        deleted = list(api.state.deleted)
    name = job["metadata"]["name"]
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime",
                                  "apiGroup": "trainer.kubeflow.org"}
    trainer = spec["trainer"]
    assert trainer["image"] == "registry.example.com/ml/aptops-train:1.2.3"
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 1
    assert trainer["command"][:5] == ["torchrun", "--no-python", "aptops", "train", "run"]
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "1", "memory": "2Gi"},
                                           "limits": {"cpu": "2", "memory": "4Gi"}}
    env = {e["name"]: e for e in trainer["env"]}
    assert env["APTOPS_CHECKPOINT_DIR"]["value"] == str(tmp_path / "cache" / "checkpoints")
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN", "optional": True}
    pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod_spec = pod["template"]["spec"]["template"]["spec"]
    assert pod["name"] == "node" and pod_spec["volumes"] == [
        {"name": "aptops-cache", "persistentVolumeClaim": {"claimName": "aptops-cache"}}]
    assert pod_spec["containers"] == [{"name": "node", "volumeMounts": [
        {"name": "aptops-cache", "mountPath": str(tmp_path / "cache")}]}]
    assert pod_spec["nodeSelector"] == {"pool": "gpu"} and pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # the model came back into the task's output, trained by two nodes; the job and its scratch are gone
    trained = Path(outs["trained"].path)
    assert is_complete(trained) and read_json(trained / "metrics.json")["world_size"] == 2
    assert outs["metrics"].logged["global_step"] == 4 and "<polyline" in Path(outs["report"].path).read_text()
    assert is_complete(Path(outs["heldout"].path))
    assert deleted == [name] and not (tmp_path / "cache" / "aptops" / "trainjobs" / name).exists()
    assert not any((tmp_path / "cache" / "checkpoints").glob("*"))  # removed when the step succeeded


@pytest.mark.parametrize(("behaviour", "expected"), [
    ("oom", ["OOMKilled", "exit code 137", "FailedJob", "Killed"]),
    ("image_pull", ["ErrImagePull", "pull access denied for registry.example.com/ml/aptops-train:1.2.3"]),
])
def test_a_failed_trainjob_reaches_the_user_with_its_reason(tiny_llama, tmp_path, monkeypatch, behaviour, expected):
    settings = _cluster(tmp_path)
    with TrainerApiStandIn(tmp_path) as api:
        api.state.behaviour = behaviour
        with pytest.raises(PipelineError) as info:
            _launch(tmp_path, monkeypatch, api, settings, tiny_llama)
        assert api.state.deleted == []  # keep: on_failure, so its pods can be read
    message = str(info.value)
    for text in expected:
        assert text in message, message
    assert "kubectl logs -n ml -l jobset.sigs.k8s.io/jobset-name=" in message
    assert not is_complete(tmp_path / "outputs" / "trained")


def test_a_cluster_without_trainer_or_permission_says_what_to_do(tiny_llama, tmp_path, monkeypatch):
    settings = _cluster(tmp_path)
    for case, change, message in (("absent", {"installed": False}, "no TrainJob API .* install Kubeflow Trainer"),
                                  ("forbidden", {"allowed": {"get"}}, "not allowed to create TrainJobs in namespace 'ml'")):
        work = tmp_path / case
        work.mkdir()
        with TrainerApiStandIn(work) as api:
            for key, value in change.items():
                setattr(api.state, key, value)
            with pytest.raises(PipelineError, match=message):
                _launch(work, monkeypatch, api, settings, tiny_llama)
            assert api.state.created == []


def test_dry_run_prints_the_trainjob_and_its_config_without_a_cluster(tiny_llama, tmp_path):
    from kubeflow_trainer_api import models

    cluster = Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml"
    out = "/cache/runs/dry"
    proc = subprocess.run([sys.executable, "-m", "aptops.cli", "train", "run", "/cache/models/base", "/cache/data",
                           "--out", out, "--nodes", "4", "--gpus-per-node", "8", "--dry-run",
                           "--cluster", str(cluster), "--set", "training_args.max_steps=10"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config_map, job = yaml.safe_load_all(proc.stdout)
    assert models.TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job  # nothing the Trainer API does not know
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert trainer["command"] == ["torchrun", "--no-python", "aptops", "train", "run", "/cache/models/base",
                                  "/cache/data", "--out", out, "--config", "/etc/aptops/config.json"]
    volumes = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "aptops-config", "configMap": {"name": config_map["metadata"]["name"]}} in volumes
    config = json.loads(config_map["data"]["config.json"])  # what the nodes train with: the file's strategy
    assert config["strategy"] == "fsdp" and config["training_args"] == {"max_steps": 10}
    assert not (tmp_path / "cache").exists() and list(tmp_path.iterdir()) == []  # nothing was written


def test_nodes_without_dry_run_are_refused(tiny_llama, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "aptops.cli", "train", "run", str(tiny_llama), "x.jsonl",
                           "--out", str(tmp_path / "o"), "--nodes", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "add --dry-run" in proc.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("stage", ["distill", "prune", "multimodal"])
def test_every_training_stage_carries_its_strategy_into_the_job(stage, tmp_path):
    from aptops.cluster.trainjob import dry_run_manifests
    from aptops.distill import DistillConfig
    from aptops.multimodal import MultimodalConfig
    from aptops.prune import PruneConfig

    config = {"distill": DistillConfig, "prune": PruneConfig, "multimodal": MultimodalConfig}[stage]()
    settings = _cluster(tmp_path, strategy="ddp" if stage == "multimodal" else "deepspeed")
    launch = settings.trainjob_launch(stage)
    argv = [stage, "train" if stage == "multimodal" else "run", "/cache/in"]
    config_map, job = dry_run_manifests(launch, stage=stage, argv=argv, output_dir="/cache/out", config=config)
    assert job["spec"]["trainer"]["image"] == f"registry.example.com/ml/aptops-{stage}:1.2.3"
    data = json.loads(config_map["data"]["config.json"])
    assert (data.get("training") or data).get("strategy", "ddp") == ("ddp" if stage == "multimodal" else "deepspeed")
    if stage == "multimodal":  # its own training loop: DDP only, and it says so
        from aptops.core.errors import ConfigError

        with pytest.raises(ConfigError, match="trains with DDP only"):
            dry_run_manifests(_cluster(tmp_path, strategy="fsdp").trainjob_launch(stage), stage=stage, argv=argv,
                              output_dir="/cache/out", config=config)
