"""The ``deploy`` pipeline on one machine: import → GGUF (quant gate) → Ollama (stand-in) → S3 backup → Model Registry
(stand-in)."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.cli import aptops
from tests.services.model_registry_standin import ModelRegistryStandIn
from tests.services.ollama_standin import OllamaStandIn


@pytest.mark.slow
def test_deploy_pipeline_exports_registers_smoke_tests_and_backs_up(smollm2, s3_server, tmp_path):
    bucket = f"deploy-{uuid.uuid4().hex[:6]}"
    with OllamaStandIn(tmp_path / "ollama") as ollama, ModelRegistryStandIn() as mr:
        out = aptops("run", "deploy", "--local", "--param", f"model={smollm2}", "--param", "quantization=Q8_0",
                     "--param", "model_name=smollm2:q8", "--param", f"ollama_host={ollama.host}",
                     "--param", f"backup_destinations=s3://{bucket}/gguf", "--param", f"registry={mr.url}",
                     "--runs-dir", str(tmp_path / "runs"),
                     cwd=tmp_path, env={"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                                        "AWS_ENDPOINT_URL": s3_server.endpoint})
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "smollm2:q8" in ollama.state.models and not ollama.state.refused
        # the GGUF folder, registered without an evaluation (deploy judges no tasks): format, quant, verification
        (version,) = mr.state.versions.values()
        (artifact,) = mr.state.artifacts.values()
        assert (artifact["uri"], artifact["modelFormatName"], artifact["modelFormatVersion"]) == (
            f"s3://{bucket}/gguf", "gguf", "Q8_0")
        assert "metric.min_logit_cosine" in version["customProperties"]
        assert not [r for r in mr.state.refused if not r.startswith("GET")]  # a GET's 404 is how the client finds
        assert not any(k.startswith("eval.") for k in version["customProperties"])
    (smoke,) = (tmp_path / "runs").rglob("ollama-smoke-test/served/smoke_test.json")
    report = json.loads(smoke.read_text())
    assert report["passed"] and all(r["answer"].strip() for r in report["results"])
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert {"gguf/model-Q8_0.gguf", "gguf/verify.json", "gguf/manifest.json"} <= keys
    assert "top1_agreement" in out.stdout and "tokens_per_second" in out.stdout
