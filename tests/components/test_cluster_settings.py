"""Kubernetes placement comes from one place: ClusterSettings.apply, for CPU and GPU stages alike."""

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
import yaml

kfp = pytest.importorskip("kfp")

from kfp import compiler, dsl  # noqa: E402

from aptops.cluster.settings import ClusterSettings, Toleration, parse_selector  # noqa: E402
from aptops.core.errors import ConfigError  # noqa: E402


@dsl.component(base_image="placeholder", install_kfp_package=False)
def fake_train(steps: int) -> int:
    return steps


@dsl.component(base_image="placeholder", install_kfp_package=False)
def fake_backup(n: int) -> int:
    return n


def _compile(settings: ClusterSettings, tmp_path):
    train = settings.component(fake_train, "train")
    backup = settings.component(fake_backup, "backup")

    @dsl.pipeline(name="placement")
    def placement(steps: int = 2):
        t = settings.apply(train(steps=steps), "train")
        settings.apply(backup(n=t.output), "backup", cache=False)

    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(placement, str(path))
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_gpu_and_cpu_stages_are_placed_on_their_pools(tmp_path):
    settings = ClusterSettings(
        image_registry="registry.example.com/ml", image_tag="2.0",
        gpu_node_selector={"pool": "gpu", "gpu-type": "h100"},
        gpu_tolerations=(Toleration.parse("nvidia.com/gpu=present:NoSchedule"), Toleration.parse("spot:NoExecute")),
        cpu_node_selector={"pool": "cpu"}, gpu_resource="nvidia.com/gpu", gpu_count=2,
    )
    spec, executors = _compile(settings, tmp_path)
    train = spec["deploymentSpec"]["executors"]["exec-fake-train"]["container"]
    assert train["image"] == "registry.example.com/ml/aptops-train:2.0"
    accelerator = train["resources"]["accelerator"]
    assert accelerator["resourceCount"] == "2" and accelerator["resourceType"] == "nvidia.com/gpu"
    assert executors["exec-fake-train"]["nodeSelector"]["labels"] == {"pool": "gpu", "gpu-type": "h100"}
    tolerations = executors["exec-fake-train"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in tolerations
    assert {"key": "spot", "operator": "Exists", "effect": "NoExecute"} in tolerations
    backup = spec["deploymentSpec"]["executors"]["exec-fake-backup"]["container"]
    assert "accelerator" not in backup.get("resources", {})
    assert executors["exec-fake-backup"]["nodeSelector"]["labels"] == {"pool": "cpu"}
    assert "tolerations" not in executors["exec-fake-backup"]
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["fake-backup"]["cachingOptions"] == {} or not tasks["fake-backup"]["cachingOptions"].get("enableCache")
    assert tasks["fake-train"]["cachingOptions"]["enableCache"] is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpu_resource": "gpu"}, "extended resource name"),
        ({"gpu_count": 0}, r"gpu_count=0 is out of range"),
        ({"image_tag": "bad tag"}, "not a valid image tag"),
        ({"cpu_node_selector": {"pool": "has space"}}, "not a valid Kubernetes label"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ClusterSettings(**kwargs)


def test_selector_parsing():
    assert parse_selector(["a=b", "example.com/x=y"], field_name="s") == {"a": "b", "example.com/x": "y"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_selector(["novalue"], field_name="s")


def test_model_stages_share_the_cache_volume_and_others_do_not(tmp_path):
    spec, executors = _compile(ClusterSettings(cache_pvc="aptops-cache"), tmp_path)
    train = executors["exec-fake-train"]
    assert train["pvcMount"] == [{"constant": "aptops-cache", "mountPath": "/cache", "pvcNameParameter":
                                  {"runtimeValue": {"constant": "aptops-cache"}}}]
    env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"]["exec-fake-train"]["container"]["env"]}
    assert env == {"HF_HOME": "/cache/huggingface", "APTOPS_CACHE_DIR": "/cache/aptops",
                   "APTOPS_CHECKPOINT_DIR": "/cache/checkpoints"}  # a restarted training pod resumes from there
    assert "pvcMount" not in executors["exec-fake-backup"]
    with pytest.raises(ConfigError, match="not a valid Kubernetes name"):
        ClusterSettings(cache_pvc="Bad_Name")


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml"


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_the_example_cluster_file_compiles_every_task_with_requests_and_limits(tmp_path):
    """Every executor of every pipeline compiled from the shipped cluster file has CPU and memory requests and
    limits; the training tasks are TrainJob launchers on the CPU pool, the export task gets the file's numbers."""
    from aptops_pipelines import PIPELINES, build_pipeline

    settings = ClusterSettings.from_file(EXAMPLE)
    for name in sorted(PIPELINES):
        path = tmp_path / f"{name}.yaml"
        compiler.Compiler().compile(build_pipeline(name, settings), str(path))
        spec, platform = yaml.safe_load_all(path.read_text())
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for executor, body in spec["deploymentSpec"]["executors"].items():
            res = body["container"].get("resources", {})
            assert {"resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"} <= set(res), \
                (name, executor, res)
            assert [s["secretName"] for s in k8s[executor]["imagePullSecret"]] == ["regcred"], (name, executor)
            assert body["container"]["image"].startswith("registry.example.com/ml/aptops-")
        if name == "lifecycle":
            executors = spec["deploymentSpec"]["executors"]
            train = executors["exec-train-model"]["container"]
            assert "accelerator" not in train["resources"] and train["resources"]["resourceMemoryLimit"] == "4Gi"
            env = {e["name"]: e["value"] for e in train["env"]}
            launch = json.loads(env["APTOPS_TRAINJOB"])
            assert launch["settings"]["num_nodes"] == 2 and launch["settings"]["gpus_per_node"] == 8
            assert launch["requests"] == {"cpu": "8", "memory": "64Gi"} and launch["pvc"] == "aptops-cache"
            assert "HF_TOKEN" not in json.dumps(env) or "valueFrom" not in json.dumps(env)  # names, never values
            assert k8s["exec-train-model"]["nodeSelector"]["labels"] == {"aptops.io/pool": "cpu"}
            export = executors["exec-export-gguf"]["container"]["resources"]
            assert (export["resourceCpuRequest"], export["resourceMemoryLimit"]) == ("8", "64Gi")
            evaluate = executors["exec-evaluate-compression"]["container"]  # not a training task: no launcher
            assert "APTOPS_TRAINJOB" not in {e["name"] for e in evaluate.get("env", [])}


@pytest.mark.parametrize(("text", "message"), [
    ("images: {regsitry: x}", r"unknown config key 'images.regsitry'.*did you mean 'registry'"),
    ("trainjob: {nodes: 2}", r"unknown config key 'trainjob.nodes'.*did you mean 'num_nodes'"),
    ("resources: {train: {limits: {memory: 16gb}}}", r"resources.train.limits.memory='16gb' is not a memory quantity"),
    ("resources: {train: {requests: {cpu: two}}}", r"resources.train.requests.cpu='two' is not a CPU quantity"),
    ("resources: {train: {gpus: -1}}", r"resources.train.gpus=-1 is out of range"),
    ("resources: {train: {requests: {memory: 128Gi}}}", r"memory request 128Gi is above the limit 64Gi"),
    ("resources: {trian: {gpus: 1}}", r"resources.trian: no such stage"),
    ("trainjob: {enabled: true}", r"trainjob.enabled needs cache.pvc"),
    ("trainjob: {gpus_per_node: -2}", r"trainjob.gpus_per_node"),
    ("trainjob: {strategy: zero}", r"trainjob.strategy"),
    ("images: {digests: {train: 'sha256:abc'}}", r"is not a digest"),
    ("pools: {gpu: {tolerations: ['nvidia.com/gpu']}}", r"must look like key=value:Effect"),
    ("[1, 2]", r"must hold a mapping"),
    # issue 32: a trailing newline passed every name check and reached the YAML as an invalid name
    ('images: {tag: "v1\\n"}', r"is not a valid image tag"),
    ('credentials: {aws: "aws-creds\\n"}', r"is not a valid Kubernetes name"),
    ('cache: {pvc: "models\\n"}', r"is not a valid Kubernetes name"),
    ('pools: {gpu: {node_selector: {pool: "gpu\\n"}}}', r"is not a valid Kubernetes label"),
    ('images: {registry: "reg.example.com/ml\\n"}', r"is not a valid registry"),
    # a second `credentials:` silently dropped the first (the AWS Secret)
    ("credentials: {aws: aws-creds}\ncache: {pvc: c}\ncredentials: {hf: hf-token}", r"'credentials' appears twice"),
    ("cache: {pvc: models, mount_path: /cache/has space}", r"cache.mount_path must be a path"),
    ("cache: {pvc: models, mount_path: /" + "a" * 2000 + "}", r"cache.mount_path must be a path of at most 1024"),
    ("service_account: " + "a" * 10_000, r"service_account holds 10,000 characters"),
])
def test_a_bad_cluster_file_is_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        ClusterSettings.from_file(_write(tmp_path, text))


def test_a_bad_cluster_file_fails_compile_before_anything_is_written(tmp_path):
    import subprocess
    import sys

    path = _write(tmp_path, "resources: {train: {limits: {memory: 16gb}}}")
    proc = subprocess.run([sys.executable, "-m", "aptops.cli", "compile", "--cluster", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "16gb" in proc.stderr and "is not a memory quantity" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_flags_override_the_file_and_digests_pin_images():
    base = ClusterSettings.from_file(EXAMPLE)
    digest = "sha256:" + "ab" * 32
    settings = dataclasses.replace(base.with_flags(image_tag="9.9", gpu_resource=None), image_digests={"train": digest})
    assert settings.image("train") == f"registry.example.com/ml/aptops-train@{digest}"
    assert settings.image("data") == "registry.example.com/ml/aptops-data:9.9"
    assert settings.resources_for("train").gpus == 1 and settings.resources_for("data").gpus is None
    # a stage the file leaves out keeps aptops' defaults, field by field
    assert settings.resources_for("hub").limits.memory == "8Gi"
