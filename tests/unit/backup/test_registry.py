"""Model Registry: a backed-up model registered through the real ``model-registry`` client against the protocol
stand-in, with the backup on the local SeaweedFS S3; idempotence, refusals, and what the registry receives."""

from __future__ import annotations

import json
import shutil
import socket
import uuid

import pytest

from aptops.backup import backup_model
from aptops.backup.registry import CONTENT_KEY, Provenance, RegistryConfig, register_model_version
from aptops.core.errors import ConfigError, StorageError
from tests.cli import aptops
from tests.models import CORPUS
from tests.services.model_registry_standin import ModelRegistryStandIn

TOKEN = "mr-token-3f9c1e"



@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    """A real train-stage artifact (one step): weights, lineage, metrics; and an eval stage's results of it."""
    import datasets

    from aptops.train import TrainConfig, train_with_hf_trainer

    out = tmp_path_factory.mktemp("registry") / "trained"
    train_with_hf_trainer(str(tiny_llama), None, datasets.Dataset.from_dict({"text": CORPUS}), out, TrainConfig(
        block_size=32, eval_fraction=0.2, training_args={"max_steps": 1, "per_device_train_batch_size": 4,
                                                         "use_cpu": True, "report_to": "none"}))
    results = out.parent / "results.json"
    results.write_text(json.dumps({"label": "trained", "models": {"trained": {"results": {
        "tiny_mc": {"alias": "tiny_mc", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.75}}}}}))
    return out, results


def _props(entity):
    return {k: next(x for n, x in v.items() if n != "metadataType") for k, v in entity.get("customProperties", {}).items()}


def test_a_backed_up_model_is_registered_once_with_format_metrics_lineage_and_provenance(s3_env, trained, monkeypatch):
    model, results = trained
    uri = f"s3://reg-{uuid.uuid4().hex[:6]}/models/tiny"
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", TOKEN)
    run = Provenance(group="team-llm", id="run-7f3a", name="lifecycle-nightly")
    with ModelRegistryStandIn(token=TOKEN) as mr:
        config = RegistryConfig(address=mr.url, author="ci")
        # not in remote storage yet: refused before the registry hears anything
        with pytest.raises(StorageError, match=r"holds no complete backup .*aptops backup"):
            register_model_version(model, uri, name="tiny", config=config, provenance=run)
        with pytest.raises(ConfigError, match="local path"):
            register_model_version(model, str(model), name="tiny", config=config)
        assert not mr.state.writes()
        backup_model(model, [uri]).raise_for_failures()
        result = register_model_version(model, uri, name="tiny", config=config, evaluation=results, provenance=run,
                                        description="nightly")
        reg = result.details["registration"]
        assert reg["created"] and result.metrics == {"registered": 1.0}
        (rm,) = mr.state.models.values()
        (mv,) = mr.state.versions.values()
        (ma,) = mr.state.artifacts.values()
        assert rm["name"] == "tiny" and rm["owner"] == "ci" and mv["registeredModelId"] == rm["id"]
        assert mv["name"] == reg["version"] and mv["name"].startswith("safetensors-") and mv["author"] == "ci"
        assert mv["description"] == "nightly"
        import transformers

        assert (ma["uri"], ma["modelFormatName"], ma["modelFormatVersion"]) == (uri, "safetensors",
                                                                                transformers.__version__)
        assert (ma["modelSourceKind"], ma["modelSourceClass"], ma["modelSourceGroup"], ma["modelSourceId"],
                ma["modelSourceName"]) == ("kfp", "pipelinerun", "team-llm", "run-7f3a", "lifecycle-nightly")
        props = _props(mv)
        lineage = json.loads((model / "aptops.json").read_text())
        assert props["metric.perplexity"] == pytest.approx(lineage["metrics"]["perplexity"])
        assert props["eval.tiny_mc.acc"] == 0.5 and props["eval.tiny_mc.acc_norm"] == 0.75
        assert not any("stderr" in k for k in props)
        assert props["stages"] == "train" and props["base_model"] == lineage["inputs"]["model"]
        assert props["version.transformers"] == transformers.__version__ and props["pipeline_run_id"] == "run-7f3a"
        assert len(props[CONTENT_KEY]) == 64 and mv["name"] == f"safetensors-{props[CONTENT_KEY][:12]}"
        assert mv["customProperties"]["metric.perplexity"]["metadataType"] == "MetadataDoubleValue"
        # the same content again: found, nothing written
        writes = len(mr.state.writes())
        again = register_model_version(model, uri, name="tiny", config=config, evaluation=results, provenance=run)
        assert not again.details["registration"]["created"] and again.metrics == {"registered": 0.0}
        assert len(mr.state.writes()) == writes and len(mr.state.versions) == 1
        # another model under a version name that is taken: refused, naming it
        other = model.parent / "other"
        shutil.copytree(model, other)
        (other / "generation_config.json").write_text('{"max_new_tokens": 7}')
        other_uri = f"{uri}-other"
        backup_model(other, [other_uri]).raise_for_failures()
        with pytest.raises(StorageError, match=f"already has 'tiny' version '{reg['version']}'"):
            register_model_version(other, other_uri, name="tiny", version=reg["version"], config=config)
        # a backup of another model is not this model's location
        with pytest.raises(StorageError, match=r"holds another model .*generation_config\.json"):
            register_model_version(other, uri, name="tiny", config=config)
        assert len(mr.state.writes()) == writes
        # under its own content name it is a second version of the same registered model
        register_model_version(other, other_uri, name="tiny", config=config)
        assert len(mr.state.models) == 1 and len(mr.state.versions) == 2
        assert all(r["method"] == "GET" or r["path"].startswith("/api/model_registry/v1/") for r in mr.state.requests)


def test_an_unreachable_or_refusing_registry_is_a_clear_error(s3_env, trained, monkeypatch):
    model, _ = trained
    uri = f"s3://reg-{uuid.uuid4().hex[:6]}/m"
    backup_model(model, [uri]).raise_for_failures()
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", "wrong-token")
    with ModelRegistryStandIn(token=TOKEN) as mr:
        with pytest.raises(StorageError, match="refused the request \\(401\\): check the token in MODEL_REGISTRY_TOKEN"):
            register_model_version(model, uri, name="tiny", config=RegistryConfig(address=mr.url))
        assert not mr.state.models
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StorageError, match=f"cannot reach Model Registry at http://127.0.0.1:{port}.*address and port"):
        register_model_version(model, uri, name="tiny", config=RegistryConfig(address=f"http://127.0.0.1:{port}"))
    with pytest.raises(ConfigError, match="must start with http:// or https://"):
        RegistryConfig(address="model-registry:8080")


def test_the_cli_registers_and_says_so_without_the_token(s3_server, trained, tmp_path):
    model, results = trained
    uri = f"s3://reg-{uuid.uuid4().hex[:6]}/cli"
    env = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
           "AWS_ENDPOINT_URL": s3_server.endpoint, "MODEL_REGISTRY_TOKEN": TOKEN}
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    with ModelRegistryStandIn(token=TOKEN) as mr:
        missing = aptops("registry", "add", uri, "--model", str(copy), "--name", "tiny", "--address", mr.url, env=env)
        assert missing.returncode != 0 and "no complete backup" in missing.stderr + missing.stdout
        assert aptops("backup", str(copy), "--to", uri, env=env).returncode == 0
        for said in ("registered ->", "already registered (nothing added)"):
            out = aptops("registry", "add", uri, "--model", str(copy), "--name", "tiny", "--address", mr.url,
                         "--evaluation", str(results), "--run-id", "run-1", "--version", "v1", env=env)
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"tiny v1: {said}" in out.stdout
            assert TOKEN not in out.stdout + out.stderr
        assert [v["name"] for v in mr.state.versions.values()] == ["v1"]
