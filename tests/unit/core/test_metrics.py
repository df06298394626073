from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from aptops.core.errors import ConfigError
from aptops.core.metrics import HttpSink, PushgatewaySink, TextfileSink, sink_from_env, stage_run


def test_textfile_sink_records_duration_outcome_and_stage_values(tmp_path):
    sink = TextfileSink(tmp_path)
    with stage_run(pipeline="data", run_id="r1", stage="data", step="clean", sink=sink) as m:
        m.gauge("rows_out", 42)
        m.counter("files_read", 2)
    text = (tmp_path / "clean.prom").read_text()
    labels = 'pipeline="data",run_id="r1",stage="data",step="clean"'
    assert f"aptops_data_rows_out{{{labels}}} 42.0" in text
    assert f"aptops_data_files_read_total{{{labels}}} 2.0" in text
    assert f'aptops_stage_outcome{{outcome="success",{labels}}} 1.0' in text
    assert f'aptops_stage_outcome{{outcome="failure",{labels}}} 0.0' in text
    assert "aptops_stage_duration_seconds{" in text


def test_failure_is_recorded_and_reraised(tmp_path):
    with pytest.raises(ZeroDivisionError), stage_run(pipeline="p", run_id="r", stage="data", sink=TextfileSink(tmp_path)):
        1 / 0  # noqa: B018
    assert 'aptops_stage_outcome{outcome="failure",pipeline="p",run_id="r",stage="data",step="data"} 1.0' in (
        tmp_path / "data.prom"
    ).read_text()


def test_unreachable_gateway_does_not_fail_the_stage(caplog):
    with stage_run(pipeline="p", run_id="r", stage="data", sink=PushgatewaySink("http://127.0.0.1:9", timeout_s=1)):
        pass
    assert "could not send metrics" in caplog.text


def test_sink_from_env(tmp_path):
    assert isinstance(sink_from_env(tmp_path, {}), TextfileSink)
    assert sink_from_env(tmp_path, {"APTOPS_METRICS_DIR": str(tmp_path / "m")}).directory == tmp_path / "m"
    assert isinstance(sink_from_env(tmp_path, {"APTOPS_PUSHGATEWAY_URL": "http://gw:9091"}), PushgatewaySink)
    with pytest.raises(ConfigError, match="must start with http"):
        sink_from_env(tmp_path, {"APTOPS_PUSHGATEWAY_URL": "gw:9091"})
    with pytest.raises(ConfigError, match="not a valid Prometheus name"), stage_run(
        pipeline="p", run_id="r", stage="data"
    ) as m:
        m.gauge("bad name", 1)


def _query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success"
    return body["data"]["result"]


def _wait_for(prom: str, expr: str, timeout_s: float = 30.0) -> list[dict]:
    """Poll Prometheus until ``expr`` has a sample (it scrapes every second) or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = _query(prom, expr)
        if result:
            return result
        time.sleep(0.5)
    return []


@pytest.mark.integration
def test_pushed_stage_metric_is_scraped_by_real_prometheus(pushgateway, prometheus):
    run_id = f"it-{time.time_ns()}"
    sink = PushgatewaySink(pushgateway)
    with stage_run(pipeline="data", run_id=run_id, stage="data", step="clean", sink=sink) as m:
        m.gauge("rows_out", 1234)
    expr = f'aptops_data_rows_out{{run_id="{run_id}"}}'
    result = _wait_for(prometheus, expr)
    assert result, f"Prometheus never saw {expr}"
    assert float(result[0]["value"][1]) == 1234.0
    assert result[0]["metric"]["stage"] == "data"
    assert result[0]["metric"]["job"] == "aptops-data"
    outcome = _query(prometheus, f'aptops_stage_outcome{{run_id="{run_id}",outcome="success"}}')
    assert float(outcome[0]["value"][1]) == 1.0
    # the run's group is cleaned up from the gateway afterwards
    sink.delete(job="aptops-data", run_id=run_id, stage="data", step="clean")
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5) as resp:
        assert run_id not in resp.read().decode()


def test_http_sink_serves_metrics():
    from tests.services.servers import free_port

    port = free_port()
    with stage_run(pipeline="train", run_id="r9", stage="data", sink=HttpSink(port, addr="127.0.0.1")) as m:
        m.gauge("tokens_per_second", 321.5)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    assert 'aptops_data_tokens_per_second{pipeline="train",run_id="r9",stage="data",step="data"} 321.5' in body


@pytest.mark.integration
def test_cli_stage_pushes_to_gateway_and_prometheus_scrapes_it(pushgateway, prometheus, tmp_path):
    """The real entry point: `aptops data clean` with APTOPS_PUSHGATEWAY_URL set, read back from Prometheus."""
    from tests.cli import aptops

    src = tmp_path / "in.txt"
    src.write_text("one https://a.io\ntwo\nthree\n")
    run_id = f"cli-it-{time.time_ns()}"
    out = aptops("data", "clean", str(src), "--out", str(tmp_path / "ds"),
                 env={"APTOPS_PUSHGATEWAY_URL": pushgateway, "APTOPS_RUN_ID": run_id})
    assert out.returncode == 0, out.stderr
    expr = f'aptops_data_rows_out{{run_id="{run_id}",step="clean"}}'
    result = _wait_for(prometheus, expr)
    assert result and float(result[0]["value"][1]) == 3.0
    urls = _query(prometheus, f'aptops_data_urls_removed{{run_id="{run_id}"}}')
    assert float(urls[0]["value"][1]) == 1.0
    assert not (tmp_path / "ds.metrics").exists(), "with a gateway configured no textfile is written"
