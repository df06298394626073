"""The hub stage against the stand-in Hub, through the real huggingface_hub and datasets clients."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from aptops.core.artifacts import write_lineage
from aptops.core.errors import ArtifactNotFoundError, ConfigError, InvalidArtifactError, StorageError
from aptops.hub import (
    FetchConfig,
    PublishConfig,
    create_model_card,
    export_to_huggingface,
    fetch_model,
    import_from_huggingface,
    lineage_chain,
    load_hf_dataset,
    publish_model,
)
from aptops.hub.card import PLACEHOLDER


@pytest.fixture
def model_dir(tiny_llama, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    write_lineage(folder, stage="train", inputs={"model": "hf://HuggingFaceTB/SmolLM2-135M", "dataset": "runs/clean"},
                  config={"block_size": 64, "learning_rate": 5e-4}, metrics={"eval_loss": 2.5, "perplexity": 12.18})
    return folder


def test_export_then_import_is_bit_identical(hub, model_dir, tmp_path):
    repo = f"{hub.user}/roundtrip"
    url = export_to_huggingface(str(model_dir), None, repo, private=True, token=hub.token, revision_tag="v1")
    assert url.startswith(f"{hub.endpoint}/{repo}/commit/")
    server_files = hub.files(repo)
    assert "model.safetensors" in hub.lfs_paths(repo)  # weights went through the LFS path
    oid = hashlib.sha256(server_files["model.safetensors"]).hexdigest()
    assert oid in hub.state.lfs_verified  # and the server recomputed its sha256
    assert "README.md" in server_files and "result.json" not in server_files

    model, tokenizer = import_from_huggingface(repo, tmp_path / "local", revision="v1", token=hub.token)
    original = load_file(model_dir / "model.safetensors")
    downloaded = load_file(tmp_path / "local" / "model.safetensors")
    assert original.keys() == downloaded.keys()
    assert all(torch.equal(original[k], downloaded[k]) for k in original)
    assert (tmp_path / "local" / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
    text = "Kubernetes runs the pipeline; 12345."
    from transformers import AutoTokenizer

    assert tokenizer(text).input_ids == AutoTokenizer.from_pretrained(model_dir)(text).input_ids
    assert model.config.num_hidden_layers == 2


def test_publish_then_fetch_is_the_stage_contract(hub, model_dir, tmp_path):
    repo = f"{hub.user}/contract"
    published = publish_model(model_dir, repo=repo, config=PublishConfig(revision_tag="v1"), token=hub.token)
    assert published.stage == "hub" and published.outputs["commit"].startswith(f"{hub.endpoint}/{repo}/commit/")
    assert published.metrics["files"] >= 4 and published.metrics["bytes"] > (model_dir / "model.safetensors").stat().st_size
    assert hub.state.repos[("model", repo)].private  # private unless asked otherwise
    fetched = fetch_model(repo, output_dir=tmp_path / "in", config=FetchConfig(revision="v1"), token=hub.token)
    assert fetched.outputs["model"] == str(tmp_path / "in") and fetched.details["commit"]
    assert (tmp_path / "in" / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert not list(tmp_path.glob(".*"))  # nothing beside the artifact


def _with_remote_code(folder):
    (folder / "modeling_evil.py").write_text("import os\nos.system('touch /tmp/pwned')\n")
    (folder / "configuration_evil.py").write_text("X = 1\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM", "AutoConfig": "configuration_evil.X"}
    (folder / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder


def test_import_drops_remote_code_unless_trusted(hub, model_dir, tmp_path, caplog):
    """Issue 25: importing a local folder copied modeling_*.py and auto_map along, for the next tool to run."""
    _with_remote_code(model_dir)
    caplog.set_level(logging.WARNING)
    result = fetch_model(model_dir, output_dir=tmp_path / "safe")
    assert not list((tmp_path / "safe").glob("*.py"))
    assert "auto_map" not in json.loads((tmp_path / "safe" / "config.json").read_text())
    assert "auto_map" not in json.loads((tmp_path / "safe" / "tokenizer_config.json").read_text())
    assert sorted(result.details["remote_code_dropped"]) == [
        "config.json:auto_map", "configuration_evil.py", "modeling_evil.py", "tokenizer_config.json:auto_map"]
    assert result.metrics["remote_code_dropped"] == 4 and "trust_remote_code" in caplog.text
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "safe").config.num_hidden_layers == 2  # still loads
    # from a Hub repo as well
    repo = f"{hub.user}/with-code"
    publish_model(model_dir, repo=repo, token=hub.token)
    assert "modeling_evil.py" in hub.files(repo)
    remote = fetch_model(repo, output_dir=tmp_path / "remote", token=hub.token)
    assert "config.json:auto_map" in remote.details["remote_code_dropped"] and not list((tmp_path / "remote").glob("*.py"))
    # asked for: kept as it was
    kept = fetch_model(model_dir, output_dir=tmp_path / "kept", config=FetchConfig(trust_remote_code=True))
    assert kept.details["remote_code_dropped"] == [] and (tmp_path / "kept" / "modeling_evil.py").is_file()
    assert "auto_map" in json.loads((tmp_path / "kept" / "config.json").read_text())


def test_private_repo_needs_a_token_and_the_token_never_leaks(hub, model_dir, tmp_path, caplog):
    repo = f"{hub.user}/private-one"
    export_to_huggingface(str(model_dir), None, repo, private=True, token=hub.token)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ArtifactNotFoundError, match="private or gated") as info:
        import_from_huggingface(repo, tmp_path / "x")
    bad = "hf_" + "x" * 30
    with pytest.raises(StorageError, match="refused the token") as refused:
        export_to_huggingface(str(model_dir), None, repo, token=bad)
    for message in (str(info.value), str(refused.value), caplog.text):
        assert hub.token not in message and bad not in message


def test_export_reuploads_nothing_unchanged_and_tags_versions(hub, model_dir):
    repo = f"{hub.user}/versions"
    export_to_huggingface(str(model_dir), None, repo, token=hub.token, revision_tag="v1")
    uploads = len(hub.state.lfs_verified)
    export_to_huggingface(str(model_dir), None, repo, token=hub.token, revision_tag="v2")
    assert len(hub.state.lfs_verified) == uploads  # same weights: the LFS batch said "already there"
    refs = hub.state.repos[("model", repo)].tags
    assert set(refs) == {"v1", "v2"}


def test_multipart_lfs_upload_is_reassembled_and_checked(hub, model_dir, monkeypatch):
    monkeypatch.setattr(hub.state, "multipart_threshold", 64 * 1024)
    monkeypatch.setattr(hub.state, "chunk_size", 32 * 1024)
    repo = f"{hub.user}/multipart"
    export_to_huggingface(str(model_dir), None, repo, token=hub.token)
    assert hub.files(repo)["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()
    assert not hub.state.parts  # every part consumed by the completion call


def test_bad_inputs_are_refused_clearly(hub, model_dir, tmp_path):
    with pytest.raises(ConfigError, match="not a valid Hub repo id"):
        export_to_huggingface(str(model_dir), None, "bad repo!/name", token=hub.token)
    with pytest.raises(ConfigError, match="no namespace"):
        export_to_huggingface(str(model_dir), None, "just-a-name", token=hub.token)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(InvalidArtifactError, match=r"no \*\.safetensors"):
        export_to_huggingface(str(empty), None, f"{hub.user}/x", token=hub.token)
    (empty / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(InvalidArtifactError, match="pickled weights"):
        import_from_huggingface(str(empty))
    with pytest.raises(ArtifactNotFoundError, match="was not found"):
        import_from_huggingface(f"{hub.user}/does-not-exist", tmp_path / "y")
    export_to_huggingface(str(model_dir), None, f"{hub.user}/rev", token=hub.token)
    with pytest.raises(ArtifactNotFoundError, match="no such revision"):
        import_from_huggingface(f"{hub.user}/rev", tmp_path / "z", revision="v9")


def test_offline_mode_uses_the_cache_only(hub, model_dir, monkeypatch):
    repo = f"{hub.user}/offline"
    export_to_huggingface(str(model_dir), None, repo, token=hub.token)
    import_from_huggingface(repo, token=hub.token)  # fills the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.state.requests)
    model, _ = import_from_huggingface(repo, token=hub.token)
    assert len(hub.state.requests) == before and model.config.hidden_size == 64
    with pytest.raises(ArtifactNotFoundError, match="HF_HUB_OFFLINE"):
        import_from_huggingface(f"{hub.user}/never-downloaded")


def test_model_card_is_filled_from_the_lineage(model_dir):
    card = create_model_card(model_dir, "aptops-user/tiny", {"language": ["en"], "datasets": ["gensim/lee"]})
    text = (model_dir / "README.md").read_text()
    assert PLACEHOLDER not in text
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert meta["datasets"] == ["gensim/lee"] and "train" in meta["tags"]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["perplexity"] == pytest.approx(12.18)
    assert "100,096" in text  # parameters counted from the safetensors header
    assert card.data.eval_results[0].metric_value in (2.5, 12.18)
    assert lineage_chain(model_dir)[-1]["stage"] == "train"


def test_model_card_states_task_results_in_the_hubs_model_index(model_dir):
    """An lm-evaluation-harness run (results.json of aptops eval run) becomes model-index entries: task, dataset,
    metric type and value, as the Hub reads them, and a table in the card."""
    evaluation = {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.61, "acc_stderr,none": 0.01,
                                           "acc_norm,none": 0.58, "acc_norm_stderr,none": 0.01},
                              "gsm8k": {"exact_match,strict-match": 0.12, "exact_match_stderr,strict-match": 0.009}},
                  "configs": {"arc_easy": {"dataset_path": "allenai/ai2_arc", "dataset_name": "ARC-Easy",
                                           "test_split": "test"}, "gsm8k": {"dataset_path": "gsm8k"}},
                  "n-shot": {"arc_easy": 0, "gsm8k": 5}, "n-samples": {"arc_easy": {"effective": 2376}},
                  "lm_eval_version": "0.4.13"}
    card = create_model_card(model_dir, "aptops-user/tiny", {"evaluation": evaluation})
    text = (model_dir / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    results = meta["model-index"][0]["results"]
    arc = [r for r in results if r["task"].get("name") == "arc_easy"]
    assert arc and arc[0]["dataset"] == {"name": "arc_easy", "type": "allenai/ai2_arc", "config": "ARC-Easy",
                                         "split": "test"}
    values = {m["type"]: m["value"] for r in arc for m in r["metrics"]}
    assert values == {"acc": 0.61, "acc_norm": 0.58}  # standard errors are not results
    gsm = next(m for r in results if r["task"].get("name") == "gsm8k" for m in r["metrics"])
    assert gsm["type"] == "exact_match" and gsm["value"] == 0.12 and "strict-match" in gsm["name"]
    assert "| arc_easy | acc | 0.6100 | 0 | 2376 |" in text and "lm-evaluation-harness" in text
    assert any(r.metric_type == "perplexity" for r in card.data.eval_results)  # the lineage's numbers stay


def test_model_card_without_lineage_says_so(tiny_llama, tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(tiny_llama, folder)
    create_model_card(folder, "aptops-user/plain")
    text = (folder / "README.md").read_text()
    assert "No evaluation was recorded" in text and "model-index" not in text and PLACEHOLDER not in text
    with pytest.raises(ConfigError, match="unknown keys"):
        create_model_card(folder, "aptops-user/plain", {"licence": "mit"})


def test_local_datasets_and_slices(tmp_path):
    rows = [{"text": f"document {i}", "label": i % 3} for i in range(50)]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_hf_dataset(jsonl)) == 50
    assert load_hf_dataset(jsonl, "train[:10%]")["text"] == [f"document {i}" for i in range(5)]
    assert load_hf_dataset(jsonl, "train[-2:]")["text"] == ["document 48", "document 49"]
    stream = load_hf_dataset(jsonl, "train[3:6]", streaming=True)
    assert [r["text"] for r in stream] == ["document 3", "document 4", "document 5"]
    with pytest.raises(ConfigError, match="percentage slices"):
        load_hf_dataset(jsonl, "train[:10%]", streaming=True)
    with pytest.raises(ConfigError, match="have one split"):
        load_hf_dataset(jsonl, "validation")
    with pytest.raises(ConfigError, match="not a split name"):
        load_hf_dataset(jsonl, "train[a:b]")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises((InvalidArtifactError, ValueError)):
        load_hf_dataset(empty)
    with pytest.raises(ArtifactNotFoundError):
        load_hf_dataset(tmp_path / "missing.parquet")


def test_aptops_dataset_artifact_and_save_to_disk(tmp_path):
    import datasets

    from aptops.data import CleanConfig, clean_dataset

    src = tmp_path / "raw.jsonl"
    src.write_text("".join(json.dumps({"text": f"Line number {i} of the corpus."}) + "\n" for i in range(30)))
    clean_dataset(src, output_dir=tmp_path / "clean", config=CleanConfig())
    ds = load_hf_dataset(tmp_path / "clean")
    assert len(ds) == 30 and "text" in ds.column_names
    (tmp_path / "clean" / "result.json").unlink()
    with pytest.raises(ArtifactNotFoundError, match="incomplete"):
        load_hf_dataset(tmp_path / "clean")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"]})}).save_to_disk(tmp_path / "saved")
    assert load_hf_dataset(tmp_path / "saved")["text"] == ["a", "b"]
    with pytest.raises(ConfigError, match="has no split 'test'"):
        load_hf_dataset(tmp_path / "saved", "test")


def test_hub_dataset_through_the_datasets_library(hub, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(f"{hub.user}/corpus", repo_type="dataset", exist_ok=True)
    data = tmp_path / "ds" / "data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(40)))
    (data / "validation.jsonl").write_text("".join(json.dumps({"text": f"val {i}"}) + "\n" for i in range(8)))
    api.upload_folder(repo_id=f"{hub.user}/corpus", repo_type="dataset", folder_path=data.parent,
                      commit_message="data")
    ds = load_hf_dataset(f"{hub.user}/corpus", "train[:25%]", token=hub.token)
    assert ds["text"] == [f"doc {i}" for i in range(10)]
    stream = load_hf_dataset(f"{hub.user}/corpus", "validation[:3]", streaming=True, token=hub.token)
    assert [r["text"] for r in stream] == ["val 0", "val 1", "val 2"]
    with pytest.raises(ConfigError, match="no split 'test'"):
        load_hf_dataset(f"{hub.user}/corpus", "test", token=hub.token)
    with pytest.raises(ArtifactNotFoundError, match="was not found"):
        load_hf_dataset(f"{hub.user}/no-such-dataset")


def test_cli_hub_export_and_import(hub, model_dir, tmp_path):
    env = {"HF_TOKEN": hub.token}
    import os

    run_env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-m", "aptops.cli", "hub", "export", str(model_dir), f"{hub.user}/cli-model",
                          "--private", "--tag", "v1"], capture_output=True, text=True, env=run_env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "commit" in out.stdout and hub.token not in out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-m", "aptops.cli", "hub", "import", f"{hub.user}/cli-model",
                          "--out", str(tmp_path / "imported"), "--revision", "v1"],
                         capture_output=True, text=True, env=run_env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "imported" / "model.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "aptops.cli", "hub", "export", str(model_dir), "bad name"],
                         capture_output=True, text=True, env=run_env, timeout=300)
    assert bad.returncode == 2 and "not a valid Hub repo id" in bad.stderr
