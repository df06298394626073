"""The Helm chart with a real helm: lint, render every scenario, validate, harden, alerts under promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aptops.core.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "aptops"
HELM = ROOT / ".tools" / "bin" / "helm"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
CRDS = ["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
        "--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]

pytestmark = pytest.mark.skipif(not HELM.is_file(), reason="helm is installed by make setup (scripts/install_helm.py)")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def render(*values: Path, crds: bool = True, sets: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", "rel", str(CHART), "--namespace", "aptops"]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    out = helm(*args, *(CRDS if crds else []))
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for d in docs:
        if d["kind"] == "Pod":
            specs.append((d["metadata"]["name"], d["spec"]))
        elif d["kind"] in ("Deployment", "Job"):
            specs.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
    return specs


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_every_scenario_lints_strictly_and_validates(values):
    lint = helm("lint", "--strict", str(CHART), "--namespace", "aptops", "-f", str(values))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    import kubernetes_validate

    for doc in render(values):
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # CRD kinds: checked below against their own structure
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_every_workload_is_hardened(values):
    for name, spec in pod_specs(render(values)):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is not None, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert c["resources"]["requests"] and c["resources"]["limits"], name


def test_full_scenario_wires_values_into_the_register_job(tmp_path):
    docs = render(CHART / "ci" / "full-values.yaml")
    kinds = sorted(d["kind"] for d in docs)
    assert "Secret" not in kinds  # credentials are references, never values
    assert {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "PersistentVolumeClaim"} <= set(kinds)
    (job,) = [d for d in docs if d["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == ("registry.example.com/ml/aptops-hub@sha256:"
                                  "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    args = container["args"]
    assert args[0] == "register"
    for expected in ("--cluster=/etc/aptops/cluster.yaml", "--pipeline=lifecycle", "--namespace=team-llm"):
        assert expected in args, (expected, args)
    # the values become one cluster file, the same one `aptops compile --cluster` reads, mounted into the Job
    (cluster_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rel-aptops-cluster"]
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(cluster_map["data"]["cluster.yaml"])
    from aptops.cluster.settings import ClusterSettings, Toleration

    settings = ClusterSettings.from_file(cluster_file)
    assert settings.image("train") == "registry.example.com/ml/aptops-train:0.1.0"
    assert settings.gpu_node_selector == {"pool": "gpu"} and settings.image_pull_secrets == ("regcred",)
    assert settings.gpu_tolerations == (Toleration(key="nvidia.com/gpu", value="present", effect="NoSchedule"),)
    assert settings.cpu_tolerations == (Toleration(key="dedicated", value="ml", effect="NoSchedule"),)
    assert settings.credential_secrets == {"aws": "s3-creds", "oss": "oss-creds", "hf": "hf-token",
                                           "modelscope": "modelscope-token", "registry": "model-registry-token"}
    assert settings.model_registry == "http://model-registry-service.kubeflow.svc.cluster.local:8080"
    # helm test checks the same registry answers, with the token from its Secret (a reference, never a value)
    (preflight,) = [d for d in docs if d["kind"] == "Pod"]
    (doctor,) = preflight["spec"]["containers"]
    assert f"--model-registry={settings.model_registry}" in doctor["args"]
    token = {e["name"]: e["value"] for e in doctor["env"]}["MODEL_REGISTRY_TOKEN_PATH"]  # a file, not a variable
    volume = {v["name"]: v for v in preflight["spec"]["volumes"]}["registry-token"]["secret"]
    assert volume["secretName"] == "model-registry-token" and volume["items"] == [
        {"key": "MODEL_REGISTRY_TOKEN", "path": "token"}]
    mount = {m["name"]: m["mountPath"] for m in doctor["volumeMounts"]}["registry-token"]
    assert token == f"{mount}/token"
    secure = [d for d in render(CHART / "ci" / "full-values.yaml", sets=(
        "modelRegistry.address=mr.example.com", "modelRegistry.secure=true", "modelRegistry.port=0")) if d["kind"] == "Pod"]
    assert "--model-registry=https://mr.example.com:443" in secure[0]["spec"]["containers"][0]["args"]
    assert settings.cache_pvc == "rel-aptops-cache" and settings.service_account == "rel-aptops"
    assert settings.resources_for("train").gpus == 2 and settings.resources_for("train").limits.memory == "96Gi"
    assert settings.trainjob.enabled and settings.trainjob.num_nodes == 2 and settings.trainjob.strategy == "fsdp"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/etc/aptops"] == "cluster"
    env = {e["name"]: e for e in container["env"]}
    assert "KF_PIPELINES_TOKEN" not in env and env["KF_PIPELINES_SA_TOKEN_PATH"]["value"].endswith("/token")
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["kfp-token"]["secret"]["secretName"] == "kfp-token"  # a file, not an environment variable
    (role,) = [d for d in docs if d["kind"] == "Role"]
    named = [rule for rule in role["rules"] if rule.get("resourceNames")]
    assert {v for rule in named for v in rule["verbs"]} == {"get"}
    # trainjob.enabled: exactly what a training task needs for its TrainJob, nothing else unnamed
    assert [rule for rule in role["rules"] if not rule.get("resourceNames")] == [
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["create", "get", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]
    minimal = [d for d in render(CHART / "ci" / "minimal-values.yaml") if d["kind"] == "Role"]
    assert all(rule.get("resourceNames") for d in minimal for rule in d["rules"])  # off: reads of named objects only
    (ollama,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-ollama")]
    limits = ollama["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    # the compiled pipelines would see exactly these settings: the same flags `aptops compile` takes
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "aptops"), "compile", "--help"], capture_output=True, text=True)
    for flag in ("--gpu-node-selector", "--gpu-toleration", "--secret", "--cache-pvc", "--image-registry"):
        assert flag in out.stdout


def test_monitoring_objects_only_when_the_operator_is_there():
    kinds = {d["kind"] for d in render(crds=False)}
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds
    assert "ConfigMap" in kinds  # the dashboard and settings still render


@pytest.mark.parametrize(("sets", "message"), [
    (("kfp.hots=http://x",), "hots"),
    (("image.digest=sha256:short",), "digest"),
    (("kfp.pipelines[0]=nope",), "pipelines"),
    (("monitoring.prometheusRule.stalledMinutes=0",), "stalledMinutes"),
    (("credentials.aws=Bad_Name",), "aws"),
])
def test_values_that_break_the_schema_fail(sets, message):
    args = ["template", "rel", str(CHART), "--namespace", "aptops"]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_default_namespace_is_refused():
    out = helm("template", "rel", str(CHART), "--namespace", "default")
    assert out.returncode != 0 and "default namespace" in out.stderr


def test_alerts_pass_promtool_and_their_unit_tests(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool comes with the Debian prometheus package (make setup installs it)")
    (rule,) = [d for d in render() if d["kind"] == "PrometheusRule"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copyfile(ROOT / "tests" / "assets" / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    check = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    tested = set(re.findall(r"alertname: (\w+)", (tmp_path / "alerts_test.yaml").read_text()))
    assert alerts == tested  # a unit test per alert


def test_dashboard_and_alerts_query_only_metrics_aptops_emits():
    docs = render()
    (dashboard,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    panels = json.loads(dashboard["data"]["aptops.json"])["panels"]
    queries = [t["expr"] for p in panels for t in p["targets"]]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    queries += [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    used = {m for q in queries for m in re.findall(r"\baptops_[a-z_]+", q)}
    assert used and used <= set(METRICS), used - set(METRICS)
    assert len(panels) >= 8 and dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.slow
def test_a_planted_nan_fires_the_charts_alert_in_a_real_prometheus(tiny_llama, pushgateway, tmp_path):
    """A local train pipeline run pushes to the real Pushgateway; a real Prometheus loads the chart's rendered
    rules and scrapes it; the NaN a planted infinite weight causes shows up in ALERTS."""
    import time
    import urllib.parse
    import urllib.request

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.cli import aptops
    from tests.models import CORPUS
    from tests.services.servers import start_prometheus

    planted = tmp_path / "planted"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.fill_(float("inf"))
    model.save_pretrained(planted)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(planted)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    (rule,) = [d for d in render() if d["kind"] == "PrometheusRule"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    server, prometheus = start_prometheus(tmp_path / "prom", scrape_targets=[pushgateway.split("://", 1)[1]],
                                          rule_files=[rules])
    try:
        out = aptops("run", "train", "--local", "--param", f"model={planted}", "--param", f"source={corpus}",
                     "--param", "separator=", "--param", "block_size=32", "--param", "max_steps=3",
                     "--param", "batch_size=4", "--param", 'training_args={"use_cpu": true}',
                     "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path,
                     env={"APTOPS_PUSHGATEWAY_URL": pushgateway, "APTOPS_NO_PROGRESS": "1"})
        assert out.returncode != 0  # training diverged: the train task fails, as it should
        deadline = time.monotonic() + 60
        firing: dict[str, dict] = {}
        while time.monotonic() < deadline and not {"AptopsNaNLoss", "AptopsStageFailed"} <= set(firing):
            q = urllib.parse.quote('ALERTS{alertstate="firing", pipeline="train"}')
            with urllib.request.urlopen(f"{prometheus}/api/v1/query?query={q}", timeout=5) as resp:
                firing = {r["metric"]["alertname"]: r["metric"] for r in json.loads(resp.read())["data"]["result"]}
            time.sleep(1)
    finally:
        server.stop()
    assert "AptopsNaNLoss" in firing, firing
    assert firing["AptopsNaNLoss"]["severity"] == "critical"
    assert firing["AptopsStageFailed"]["stage"] == "train"


def test_one_resource_per_template():
    templates = sorted(p for p in (CHART / "templates").rglob("*.yaml") if p.name != "namespace-guard.yaml")
    rendered = 0
    for template in templates:
        rel = template.relative_to(CHART).as_posix()
        out = helm("template", "rel", str(CHART), "--namespace", "aptops", "-f", str(CHART / "ci" / "full-values.yaml"),
                   "--show-only", rel, *CRDS)
        assert out.returncode == 0, (rel, out.stderr)
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        assert len(docs) == 1, (rel, [d["kind"] for d in docs])
        rendered += 1
    assert rendered >= 18


CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"


@pytest.mark.skipif(not CHECKOV.is_file(), reason="checkov is installed by make setup under .tools/checkov")
@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_checkov_finds_nothing(values, tmp_path):
    """Zero failures with the chart's .checkov.yaml. Scenarios that do not pin images by digest also skip
    CKV_K8S_43 (digests are optional: ci/full-values.yaml pins every image and passes it)."""
    rendered = tmp_path / "chart.yaml"
    out = helm("template", "rel", str(CHART), "--namespace", "aptops", "-f", str(values), *CRDS)
    assert out.returncode == 0, out.stderr
    rendered.write_text(out.stdout)
    args = [str(CHECKOV), "-f", str(rendered), "--config-file", str(CHART / ".checkov.yaml"), "--output", "json"]
    if "digest: sha256" not in values.read_text():
        args += ["--skip-check", "CKV_K8S_15,CKV_K8S_43"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BC_SKIP_MAPPING": "TRUE"})
    report = json.loads(run.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 150
