"""Kubernetes placement comes from one place: ClusterSettings.apply, for CPU and GPU stages alike."""

import pytest
import yaml

kfp = pytest.importorskip("kfp")

from kfp import compiler, dsl  # noqa: E402

from aptops.core.errors import ConfigError  # noqa: E402
from aptops_pipelines.cluster import ClusterSettings, Toleration, parse_selector  # noqa: E402


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
    assert env == {"HF_HOME": "/cache/huggingface", "APTOPS_CACHE_DIR": "/cache/aptops"}
    assert "pvcMount" not in executors["exec-fake-backup"]
    with pytest.raises(ConfigError, match="not a valid Kubernetes name"):
        ClusterSettings(cache_pvc="Bad_Name")
