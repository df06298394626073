"""The ``lifecycle`` pipeline: every stage of a model's life in one run, and the exit handler's outcome metric."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from tests.browser import screenshot, visible_text
from tests.cli import aptops
from tests.models import CORPUS
from tests.services.model_registry_standin import ModelRegistryStandIn
from tests.services.ollama_standin import OllamaStandIn
from tests.tasks import write_tiny_tasks

CANARIES = {"OSS_ACCESS_KEY_SECRET": "canary-oss-5f1e2d", "MODELSCOPE_API_TOKEN": "canary-ms-9b7c3a",
            "KF_PIPELINES_TOKEN": "canary-kfp-44e0aa", "OSS_ACCESS_KEY_ID": "canary-ossid-17c2",
            "MODEL_REGISTRY_TOKEN": "canary-mr-0d5e71"}


TASKS = ("process-data", "import-model", "train-model", "distill-model", "prune-model", "evaluate-compression",
         "export-gguf", "ollama-smoke-test", "export-model", "backup-artifact", "backup-artifact-2", "register-model",
         "register-model-2", "record-run-outcome", "evaluate-tasks", "evaluate-tasks-2", "evaluate-tasks-3")


def _check_console_and_report(stdout: str, run_dir, tmp_path) -> None:
    """A line per task, a short summary, no kfp.local noise; every task's log; a report a browser renders with
    the run's own numbers in it."""
    lines = stdout.splitlines()
    for task in TASKS:
        assert sum(x.startswith(f"  ✓ {task} ") for x in lines) == 1, (task, stdout)
        assert (run_dir / "logs" / f"{task}.log").is_file(), task
    assert len(lines) <= len(TASKS) + 25, stdout
    for noise in ("executor_input", "KFP Executor", "Streamed logs", "Executing task", "WARNING"):
        assert noise not in stdout, noise
    shown = [x for x in lines if x.strip()]
    assert len(shown) == len(set(shown)), stdout  # nothing twice
    for figure in ("rows in", "held-out perplexity", "compression   params", "speed         forward",
                   "llama.cpp generation", "gguf          F16", "gguf          Q8_0",
                   "smoke test", "eval          tiny_mc acc_norm: base ", "gguf F16 ", "gguf Q8_0 ",
                   "of the trained one's)", f"report        {run_dir / 'report.html'}"):
        assert figure in stdout, figure
    # every log holds its task's own output, the executor input included (nothing is lost, only moved)
    assert "executor_input" in (run_dir / "logs" / "train-model.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = {t["task"]: t["metrics"] for t in summary}
    page = run_dir / "report.html"
    screenshot(page, tmp_path, size="1200,6000")
    seen = visible_text(page, tmp_path)
    for heading in ("At a glance", "Where the time went", "Data", "Training and distillation", "Pruning",
                    "Compression trade-off", "GGUF verification", "Smoke test", "Model card, as it would be published",
                    "Stage reports", "Task evaluation (lm-evaluation-harness)", "tiny_mc acc_norm",
                    "Software that made the model", "transformers"):
        assert heading in seen, heading
    ratio = metrics["evaluate-compression"]["ratio_params"]
    assert f"params {ratio:.2f}x" in seen and f"{metrics['export-gguf']['top1_agreement']:.4g}" in seen
    served = next(run_dir.rglob("smoke_test.json")).parent
    assert [p.name for p in served.glob("*.gguf")] == ["model-Q8_0.gguf"]  # the smaller of the two is smoke-tested
    smoke = json.loads((served / "smoke_test.json").read_text())
    assert smoke["results"][0]["prompt"] in seen
    for link in (run_dir / "reports").iterdir():
        assert f"reports/{link.name}" in page.read_text()


def _check_registered(mr, *, run_dir, bucket, env) -> None:
    """Two versions of tiny:f16, the compressed model and its GGUF folder, each at its backup with its format, this
    run as provenance, its task results and lineage; registering the same model again adds nothing."""
    (rm,) = mr.state.models.values()
    assert rm["name"] == "tiny:f16"
    versions = {v["id"]: v for v in mr.state.versions.values()}
    artifacts = {ma["uri"]: (versions[vid], ma) for vid, ids in mr.state.links.items()
                 for ma in (mr.state.artifacts[i] for i in ids)}
    assert set(artifacts) == {f"s3://{bucket}/gguf", f"s3://{bucket}/model"}
    (model_version, model), (gguf_version, gguf) = artifacts[f"s3://{bucket}/model"], artifacts[f"s3://{bucket}/gguf"]
    assert (model["modelFormatName"], gguf["modelFormatName"], gguf["modelFormatVersion"]) == ("safetensors", "gguf", "F16")
    for version, artifact in ((model_version, model), (gguf_version, gguf)):
        assert (artifact["modelSourceKind"], artifact["modelSourceClass"]) == ("kfp", "pipelinerun")
        assert artifact["modelSourceId"] and artifact["modelSourceGroup"] == "local"
        props = {k: next(x for n, x in v.items() if n != "metadataType") for k, v in version["customProperties"].items()}
        assert "train > distill > prune" in props["stages"] and props["base_model"]
        assert version["name"] == f"{artifact['modelFormatName']}-{props['aptops_content_sha256'][:12]}"
    props = {k for k in model_version["customProperties"]}
    assert {"eval.tiny_mc.acc", "metric.perplexity", "version.torch"} <= props
    assert {"eval.F16.tiny_mc.acc", "eval.Q8_0.tiny_mc.acc", "metric.top1_agreement"} <= set(gguf_version["customProperties"])
    (pruned,) = run_dir.rglob("prune-model/pruned")
    writes = len(mr.state.writes())
    again = aptops("registry", "add", f"s3://{bucket}/model", "--model", str(pruned), "--name", "tiny:f16",
                   "--address", mr.url, env=env)
    assert again.returncode == 0 and "already registered (nothing added)" in again.stdout, again.stdout + again.stderr
    assert len(mr.state.writes()) == writes and len(mr.state.versions) == 2


@pytest.mark.slow
def test_lifecycle_runs_every_stage_locally(tiny_qwen3, s3_server, hub, tmp_path):
    """Every stage on a Qwen3 model (Llama runs the same in the demo), publish to the (stand-in) Hub, backups to S3 and registration in the (stand-in) Model Registry
    included, with a secret in every credential variable: none of them may appear in the output, any file the run
    wrote, the model card or compiled YAML."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    tasks = write_tiny_tasks(tmp_path / "tasks")
    bucket = f"life-{uuid.uuid4().hex[:6]}"
    with OllamaStandIn(tmp_path / "ollama") as ollama, ModelRegistryStandIn(CANARIES["MODEL_REGISTRY_TOKEN"]) as mr:
        out = aptops("run", "lifecycle", "--local", "--param", f"model={tiny_qwen3}", "--param", f"source={corpus}",
                     "--param", "data_steps={steps: [clean, quality]}", "--param", "chat_prompt=", "--param", "block_size=32", "--param", "eval_fraction=0.3",
                     "--param", "train_steps=2", "--param", "distill_steps=2", "--param", "prune_steps=2",
                     "--param", "target_sparsity=0.5", "--param", "quantization=F16,Q8_0",
                     "--param", "min_top1_agreement=0.5", "--param", f"ollama_host={ollama.host}",
                     "--param", "model_name=tiny:f16", "--param", f"backup_destinations=s3://{bucket}/gguf",
                     "--param", f"model_destinations=s3://{bucket}/model", "--param", f"registry={mr.url}",
                     "--param", f"hub_repo={hub.user}/lifecycle-model", "--param", "eval_tasks=tiny_mc",
                     "--param", f"eval_include_path={tasks}",
                     "--param", 'training_args={"use_cpu": true}', "--runs-dir", str(tmp_path / "runs"),
                     cwd=tmp_path, env={"APTOPS_NO_PROGRESS": "1", "AWS_ACCESS_KEY_ID": s3_server.access_key,
                                        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                                        "AWS_ENDPOINT_URL": s3_server.endpoint, "HF_TOKEN": hub.token, **CANARIES})
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        assert "tiny:f16" in ollama.state.models
        _check_registered(mr, run_dir=next((tmp_path / "runs").glob("lifecycle-*")), bucket=bucket, env={
            "AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            "AWS_ENDPOINT_URL": s3_server.endpoint, "MODEL_REGISTRY_TOKEN": CANARIES["MODEL_REGISTRY_TOKEN"]})
    (run_dir,) = (tmp_path / "runs").glob("lifecycle-*")
    (pruned,) = run_dir.rglob("prune-model/pruned")
    lineage = json.loads((pruned / "aptops.json").read_text())
    assert [p["stage"] for p in lineage["parents"]][-2:] == ["train", "distill"]
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "gguf/manifest.json" in keys
    # the exit handler ran and recorded the outcome
    prom = "".join(p.read_text() for p in (run_dir / "metrics").glob("*.prom"))
    assert 'aptops_pipeline_run_succeeded{' in prom and "} 1.0" in prom.split("aptops_pipeline_run_succeeded{")[1]
    _check_console_and_report(out.stdout, run_dir, tmp_path)
    card = hub.files(f"{hub.user}/lifecycle-model")["README.md"].decode()
    assert "perplexity" in card
    # the published model's task results, in the card's model-index, equal what its eval task measured
    judged = json.loads(next(run_dir.rglob("evaluate-tasks-2/results/results.json")).read_text())
    assert judged["label"] == "compressed"
    meta = yaml.safe_load(card.split("---\n")[1])
    stated = {(r["task"].get("name"), m["type"]): m["value"] for r in meta["model-index"][0]["results"]
              for m in r["metrics"]}
    assert stated[("tiny_mc", "acc")] == round(judged["models"]["compressed"]["results"]["tiny_mc"]["acc,none"], 6)
    # no secret anywhere: output, every file of the run (logs, metrics, lineage, reports), the card, the YAML
    compiled = aptops("compile", "--pipeline", "lifecycle", "--out", str(tmp_path / "yaml"), "--secret", "aws=s3-creds",
                      env={"HF_TOKEN": hub.token, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key, **CANARIES})
    assert compiled.returncode == 0, compiled.stderr
    secrets = [s3_server.secret_key, hub.token, *CANARIES.values()]
    places = {"stdout": out.stdout.encode(), "stderr": out.stderr.encode(), "model card": card.encode(),
              "compiled": (tmp_path / "yaml" / "lifecycle.yaml").read_bytes()}
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert len(files) > 50
    places |= {str(p): p.read_bytes() for p in files}
    leaks = [(where, secret) for where, data in places.items() for secret in secrets if secret.encode() in data]
    assert not leaks, leaks[:5]


def test_lifecycle_compiles_with_an_exit_handler_and_each_stage_on_its_pool(tmp_path):
    out = aptops("compile", "--pipeline", "lifecycle", "--out", str(tmp_path), "--gpu-node-selector", "pool=gpu",
                 "--cpu-node-selector", "pool=cpu")
    assert out.returncode == 0, out.stderr
    spec, platform = yaml.safe_load_all((tmp_path / "lifecycle.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    for name in ("train-model", "distill-model", "prune-model"):
        assert executors[f"exec-{name}"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    for name in ("process-data", "export-gguf", "record-run-outcome"):
        assert "accelerator" not in executors[f"exec-{name}"]["container"].get("resources", {})
    tasks = spec["root"]["dag"]["tasks"]
    exit_task = tasks["record-run-outcome"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["dependentTasks"] == ["exit-handler-1"]
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"process-data", "train-model", "distill-model", "prune-model", "evaluate-compression", "export-gguf",
            "ollama-smoke-test", "condition-2", "condition-3"} <= set(inner)
    labels = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert labels["exec-train-model"]["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert labels["exec-record-run-outcome"]["nodeSelector"]["labels"] == {"pool": "cpu"}
