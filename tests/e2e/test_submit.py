"""`aptops submit` through the real kfp.Client against a protocol-level KFP API stand-in."""

from __future__ import annotations

import pytest

from tests.cli import aptops
from tests.services.kfp_api import KfpApiStandIn

pytest.importorskip("kfp")

TOKEN = "canary-token-8f2e91"


def test_submit_sends_the_compiled_pipeline_with_params_and_token():
    with KfpApiStandIn(token=TOKEN) as api:
        out = aptops(
            "submit", "data", "--host", api.url, "--experiment", "nightly", "--param", "source=/data/corpus",
            "--param", "min_chars=5", "--image-registry", "registry.example.com/ml", "--image-tag", "v3",
            env={"KF_PIPELINES_TOKEN": TOKEN},
        )
        assert out.returncode == 0, out.stderr
        (run,) = api.state.runs
    assert run["run_id"] in out.stdout
    assert [e["display_name"] for e in api.state.experiments.values()] == ["nightly"]
    assert run["runtime_config"]["parameters"] == {"source": "/data/corpus", "min_chars": 5}
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "aptops-data"
    platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-clean-text"]["nodeSelector"]["labels"] == {"aptops.io/pool": "cpu"}
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/ml/aptops-data:v3"}
    assert api.state.rejected == 0
    assert TOKEN not in out.stdout + out.stderr


def test_submit_with_wrong_token_fails_clearly_without_echoing_it():
    with KfpApiStandIn(token=TOKEN) as api:
        out = aptops("submit", "data", "--host", api.url, env={"KF_PIPELINES_TOKEN": "wrong-secret-123"})
    assert out.returncode == 1
    assert "submitting 'data'" in out.stderr
    assert "wrong-secret-123" not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert not api.state.runs


def test_submit_to_nothing_fails_clearly(tmp_path):
    out = aptops("submit", "data", "--host", "http://127.0.0.1:9")
    assert out.returncode == 1
    assert "http://127.0.0.1:9" in out.stderr


def test_register_uploads_each_pipeline_once_and_a_new_version_on_change():
    with KfpApiStandIn(token=TOKEN) as api:
        first = aptops("register", "--host", api.url, "--pipeline", "data", "--pipeline", "backup",
                       "--image-tag", "v1", env={"KF_PIPELINES_TOKEN": TOKEN})
        assert first.returncode == 0, first.stderr
        again = aptops("register", "--host", api.url, "--pipeline", "data", "--pipeline", "backup",
                       "--image-tag", "v1", env={"KF_PIPELINES_TOKEN": TOKEN})
        assert again.returncode == 0, again.stderr
        changed = aptops("register", "--host", api.url, "--pipeline", "data", "--image-tag", "v2",
                         "--secret", "aws=s3-creds", env={"KF_PIPELINES_TOKEN": TOKEN})
        assert changed.returncode == 0, changed.stderr
        names = {p["display_name"]: pid for pid, p in api.state.pipelines.items()}
        assert set(names) == {"aptops-data", "aptops-backup"}
        data_versions = api.state.versions[names["aptops-data"]]
        backup_versions = api.state.versions[names["aptops-backup"]]
    assert "created" in first.stdout and again.stdout.count("unchanged") == 2 and "new version" in changed.stdout
    # the first upload's own version, the hashed v1 version, then the v2 one; backup unchanged
    assert len(data_versions) == 3 and len(backup_versions) == 2
    latest = data_versions[-1]["pipeline_spec"]
    images = {e["container"]["image"] for e in latest["deploymentSpec"]["executors"].values()}
    assert images and all(i.endswith(":v2") for i in images)
    assert "canary" not in str(latest)  # the token travels as a header only


def test_register_reports_a_refusing_api_clearly():
    with KfpApiStandIn(token=TOKEN) as api:
        out = aptops("register", "--host", api.url, "--pipeline", "data", env={"KF_PIPELINES_TOKEN": "wrong"})
        assert api.state.rejected >= 1
    assert out.returncode != 0 and "cannot reach the KFP API" in out.stderr and "KF_PIPELINES_TOKEN" in out.stderr
    assert "wrong" not in out.stderr  # the token itself is never printed


def test_register_in_a_pod_uses_the_mounted_service_account_token(tmp_path):
    """The Helm chart's register Job mounts a token file (KF_PIPELINES_SA_TOKEN_PATH), no KF_PIPELINES_TOKEN: the
    quick health check before the client sends the same token the client does."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with KfpApiStandIn(token=TOKEN) as api:
        out = aptops("register", "--host", api.url, "--pipeline", "data",
                     env={"KF_PIPELINES_SA_TOKEN_PATH": str(token_file), "KF_PIPELINES_TOKEN": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    assert api.state.rejected == 0
