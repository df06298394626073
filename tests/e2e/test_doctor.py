"""`aptops doctor` against a Kubernetes API stand-in and the KFP API stand-in: each failure says the fix."""

from __future__ import annotations

import pytest

from tests.cli import aptops
from tests.services.k8s_api import KubernetesApiStandIn
from tests.services.kfp_api import KfpApiStandIn

pytest.importorskip("kubernetes")


def test_doctor_passes_on_a_ready_cluster_and_only_reads(tmp_path):
    with KubernetesApiStandIn() as k8s, KfpApiStandIn() as kfp:
        k8s.state.secrets["aptops"] = {"s3-creds", "hf-token"}
        k8s.state.pvcs["aptops"] = {"aptops-cache": "Bound"}
        k8s.state.nodes = [{"labels": {"pool": "gpu"}, "allocatable": {"nvidia.com/gpu": "2"}},
                           {"labels": {"pool": "cpu"}, "allocatable": {"cpu": "8"}}]
        registered = aptops("register", "--host", kfp.url, "--pipeline", "data")
        assert registered.returncode == 0, registered.stderr
        out = aptops("doctor", "--kfp-host", kfp.url, "--pipeline", "data", "--namespace", "aptops",
                     "--secret", "s3-creds", "--secret", "hf-token", "--pvc", "aptops-cache",
                     "--gpu-node-selector", "pool=gpu", "--kubeconfig", str(k8s.kubeconfig(tmp_path / "kc")))
        assert out.returncode == 0, out.stdout + out.stderr
        assert {verb for verb, _ in k8s.state.requests} == {"GET"}
    assert "FAIL" not in out.stdout and "2 allocatable nvidia.com/gpu" in out.stdout


def test_doctor_names_every_problem_with_its_fix(tmp_path):
    with KubernetesApiStandIn() as k8s, KfpApiStandIn() as kfp:
        k8s.state.secrets["aptops"] = {"s3-creds"}
        k8s.state.forbidden_secrets = {"oss-creds"}
        k8s.state.nodes = [{"labels": {"pool": "gpu"}, "allocatable": {"cpu": "8"}}]
        out = aptops("doctor", "--kfp-host", kfp.url, "--pipeline", "train", "--namespace", "aptops",
                     "--secret", "s3-creds", "--secret", "missing-creds", "--secret", "oss-creds",
                     "--pvc", "nope", "--gpu-node-selector", "pool=gpu",
                     "--kubeconfig", str(k8s.kubeconfig(tmp_path / "kc")))
    assert out.returncode == 1
    text = " ".join(out.stdout.split())
    assert "aptops-train" in text and "aptops register" in text
    assert "kubectl -n aptops create secret generic missing-creds" in text
    assert "403" in text and "get on it" in text  # forbidden, not missing
    assert "cache.create=true" in text
    assert "none has allocatable nvidia.com/gpu" in text
    assert "5 of 7 checks failed" in out.stderr


def test_doctor_without_a_cluster_says_how_to_give_one(tmp_path):
    out = aptops("doctor", "--namespace", "aptops", "--kubeconfig", str(tmp_path / "absent"))
    assert out.returncode != 0 and "--kubeconfig" in out.stderr
    out = aptops("doctor")
    assert out.returncode != 0 and "nothing to check" in out.stderr


def test_doctor_checks_kubeflow_trainer_for_trainjobs(tmp_path):
    from tests.services.trainer_api import TrainerApiStandIn

    with TrainerApiStandIn(tmp_path) as api:
        kc = str(api.kubeconfig(tmp_path / "kc"))
        ready = aptops("doctor", "--namespace", "ml", "--trainjob-runtime", "torch-distributed", "--kubeconfig", kc)
        missing = aptops("doctor", "--namespace", "ml", "--trainjob-runtime", "deepspeed-distributed",
                         "--kubeconfig", kc)
        api.state.allowed = {"create", "get", "list"}
        denied = aptops("doctor", "--namespace", "ml", "--trainjob-runtime", "torch-distributed", "--kubeconfig", kc)
        api.state.installed = False
        absent = aptops("doctor", "--namespace", "ml", "--trainjob-runtime", "torch-distributed", "--kubeconfig", kc)
        assert not api.state.created  # nothing was created: an access review is a question, not a change
    assert ready.returncode == 0, ready.stdout + ready.stderr
    text = " ".join(ready.stdout.split())
    assert "trainjobs is served" in text and "ClusterTrainingRuntime, framework torch" in text
    assert "may create, read and delete TrainJobs in ml" in text
    assert missing.returncode == 1 and "trainjob.runtime" in " ".join(missing.stdout.split())
    assert denied.returncode == 1 and "missing in ml: delete trainjobs" in " ".join(denied.stdout.split())
    assert absent.returncode == 1 and "install Kubeflow Trainer" in " ".join(absent.stdout.split())


def test_doctor_checks_the_model_registry_the_cluster_file_names(tmp_path):
    from tests.services.model_registry_standin import ModelRegistryStandIn

    with ModelRegistryStandIn(token="mr-3c1f") as mr:
        host, port = mr.url.removeprefix("http://").split(":")
        cluster = tmp_path / "cluster.yaml"
        cluster.write_text(f"model_registry: {{address: {host}, port: {port}, secure: false}}\n")
        ok = aptops("doctor", "--cluster", str(cluster), env={"MODEL_REGISTRY_TOKEN": "mr-3c1f"})
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "model registry" in ok.stdout and f"{mr.url} answers" in " ".join(ok.stdout.split())
        refused = aptops("doctor", "--model-registry", mr.url, env={"MODEL_REGISTRY_TOKEN": "wrong"})
        assert refused.returncode == 1 and "MODEL_REGISTRY_TOKEN" in " ".join(refused.stdout.split())
        assert "mr-3c1f" not in refused.stdout + refused.stderr and "wrong" not in refused.stdout
        assert {r["method"] for r in mr.state.requests} == {"GET"}
