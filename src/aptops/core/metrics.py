"""Prometheus metrics for stages, labelled by pipeline, run id and stage, and the sinks they go to.

A stage wraps its work in :func:`stage_run`; on exit the duration, the outcome and any stage-specific
values reach a sink:

- :class:`PushgatewaySink` (``APTOPS_PUSHGATEWAY_URL``): pushed under the grouping key job/run/stage,
  which :meth:`PushgatewaySink.delete` removes once the run is recorded;
- :class:`TextfileSink` (the default): ``<dir>/<stage>.prom`` in the node-exporter textfile format;
- :class:`HttpSink`: a ``/metrics`` endpoint for long jobs scraped by a PodMonitor.

Each run uses its own ``CollectorRegistry``, so two stages in one process never mix their series.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server, write_to_textfile
from prometheus_client.exposition import delete_from_gateway, push_to_gateway

from aptops.core.errors import ConfigError
from aptops.core.locations import redact

log = logging.getLogger(__name__)

LABELS = ("pipeline", "run_id", "stage", "step")

# Every series name the chart's alerts and dashboard may query, with where it comes from. Stage gauges are
# ``aptops_<stage>_<name>`` from a stage's result metrics; these are the ones monitoring relies on
# (tests/e2e/test_helm.py checks that the chart queries nothing else, and the debug tests that the
# debugger pushes its ones).
METRICS: dict[str, str] = {
    "aptops_stage_duration_seconds": "every stage run: wall time",
    "aptops_stage_outcome": "every stage run: 1 for the outcome (success / failure) that happened",
    "aptops_stage_last_run_timestamp_seconds": "every stage run: when it ended",
    "aptops_debug_loss": "the training debugger: latest training loss",
    "aptops_debug_grad_norm": "the training debugger: latest gradient L2 norm",
    "aptops_debug_learning_rate": "the training debugger: latest learning rate",
    "aptops_debug_nan_events": "the training debugger: non-finite losses seen in the run",
    "aptops_debug_dead_neuron_ratio": "the training debugger: share of units never active",
    "aptops_debug_memory_bytes": "the training debugger: GPU memory allocated or process RSS",
    "aptops_debug_last_update_timestamp_seconds": "the training debugger: when the run last reported",
    "aptops_pipeline_run_succeeded": "the lifecycle exit handler: 1 if the run succeeded, else 0",
    "aptops_pipeline_run_end_timestamp_seconds": "the lifecycle exit handler: when the run ended",
    "aptops_backup_bytes_sent": "the backup components: bytes written to the destinations",
}
OUTCOMES = ("success", "failure")
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class MetricsSink(Protocol):
    """Where a stage's registry goes when the stage ends."""

    def emit(self, registry: CollectorRegistry, *, job: str, run_id: str, stage: str, step: str) -> None: ...


@dataclass(frozen=True)
class PushgatewaySink:
    """Push to a Prometheus Pushgateway, grouped by job/run/stage.

    Args:
        url: the gateway's base URL (``http://pushgateway:9091``).
        timeout_s: the HTTP timeout of one push.
    """

    url: str
    timeout_s: float = 10.0

    def emit(self, registry: CollectorRegistry, *, job: str, run_id: str, stage: str, step: str) -> None:
        push_to_gateway(
            self.url, job=job, registry=registry, grouping_key=_group(run_id, stage, step), timeout=self.timeout_s
        )
        log.info("metrics pushed to %s (job=%s run=%s stage=%s step=%s)", redact(self.url), job, run_id, stage, step)

    def delete(self, *, job: str, run_id: str, stage: str, step: str | None = None) -> None:
        """Remove a run's group once it is no longer needed (the pipeline's exit handler does this)."""
        delete_from_gateway(
            self.url, job=job, grouping_key=_group(run_id, stage, step or stage), timeout=self.timeout_s
        )


def _group(run_id: str, stage: str, step: str) -> dict[str, str]:
    # job/run/stage as DESIGN.md says; a stage with several components adds its step so they never overwrite.
    key = {"run": run_id, "stage": stage}
    if step != stage:
        key["step"] = step
    return key


@dataclass(frozen=True)
class TextfileSink:
    """Write ``<directory>/<step>.prom`` (atomically) in the textfile-collector format."""

    directory: Path

    def emit(self, registry: CollectorRegistry, *, job: str, run_id: str, stage: str, step: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{step}.prom"
        write_to_textfile(str(path), registry)
        log.info("metrics written to %s", path)


@dataclass
class HttpSink:
    """Serve the registry on ``/metrics`` for the life of the process (long training jobs)."""

    port: int
    addr: str = "0.0.0.0"
    _started: bool = field(default=False, init=False)

    def emit(self, registry: CollectorRegistry, *, job: str, run_id: str, stage: str, step: str) -> None:
        if not self._started:
            start_http_server(self.port, addr=self.addr, registry=registry)
            self._started = True
            log.info("metrics served on %s:%d/metrics", self.addr, self.port)


def sink_from_env(default_dir: str | Path, env: Mapping[str, str] | None = None) -> MetricsSink:
    """Choose a sink from the environment; meant for entry points (CLI, component bodies).

    ``APTOPS_PUSHGATEWAY_URL`` selects the Pushgateway; ``APTOPS_METRICS_PORT`` an HTTP endpoint;
    otherwise a textfile under ``APTOPS_METRICS_DIR`` or ``default_dir``.
    """
    env = os.environ if env is None else env
    url = env.get("APTOPS_PUSHGATEWAY_URL", "").strip()
    if url:
        if not re.match(r"^https?://", url):
            raise ConfigError(
                f"APTOPS_PUSHGATEWAY_URL={redact(url)!r} must start with http:// or https://",
                field="APTOPS_PUSHGATEWAY_URL",
                value=redact(url),
            )
        return PushgatewaySink(url)
    port = env.get("APTOPS_METRICS_PORT", "").strip()
    if port:
        try:
            return HttpSink(int(port))
        except ValueError as exc:
            raise ConfigError(f"APTOPS_METRICS_PORT={port!r} must be a port number", field="APTOPS_METRICS_PORT") from exc
    return TextfileSink(Path(env.get("APTOPS_METRICS_DIR", "").strip() or default_dir))


class StageMetrics:
    """The metrics of one stage run, in a registry of its own.

    Standard series: ``aptops_stage_duration_seconds``, ``aptops_stage_outcome{outcome}`` (1 for the
    outcome that happened), ``aptops_stage_last_run_timestamp_seconds``. Stage-specific values come
    from :meth:`gauge` and :meth:`counter` as ``aptops_<stage>_<name>``.
    """

    def __init__(self, *, pipeline: str, run_id: str, stage: str, step: str | None = None) -> None:
        step = step or stage
        for name, value in (("pipeline", pipeline), ("run_id", run_id), ("stage", stage), ("step", step)):
            if not value:
                raise ConfigError(f"metrics label {name} must not be empty", field=name, value=value)
        self.pipeline, self.run_id, self.stage, self.step = pipeline, run_id, stage, step
        self.registry = CollectorRegistry()
        self._labels = {"pipeline": pipeline, "run_id": run_id, "stage": stage, "step": step}
        self._duration = Gauge(
            "aptops_stage_duration_seconds", "Wall time of the stage run.", LABELS, registry=self.registry
        )
        self._outcome = Gauge(
            "aptops_stage_outcome", "1 for the outcome of the stage run.", (*LABELS, "outcome"),
            registry=self.registry,
        )
        self._last = Gauge(
            "aptops_stage_last_run_timestamp_seconds", "When the stage run ended (Unix time).", LABELS,
            registry=self.registry,
        )
        self._custom: dict[str, Gauge | Counter] = {}
        self.values: dict[str, float] = {}

    def _metric_name(self, name: str) -> str:
        full = f"aptops_{self.stage}_{name}"
        if not _NAME.fullmatch(full):
            raise ConfigError(f"metric name {name!r} is not a valid Prometheus name", field="metric", value=name)
        return full

    def gauge(self, name: str, value: float, *, doc: str = "") -> None:
        """Set the stage gauge ``aptops_<stage>_<name>`` to ``value``."""
        full = self._metric_name(name)
        metric = self._custom.get(full)
        if metric is None:
            metric = Gauge(full, doc or name.replace("_", " "), LABELS, registry=self.registry)
            self._custom[full] = metric
        if not isinstance(metric, Gauge):
            raise ConfigError(f"metric {full} is a counter, not a gauge", field="metric", value=name)
        metric.labels(**self._labels).set(float(value))
        self.values[name] = float(value)

    def counter(self, name: str, amount: float = 1.0, *, doc: str = "") -> None:
        """Increase the stage counter ``aptops_<stage>_<name>_total`` by ``amount``."""
        full = self._metric_name(name)
        metric = self._custom.get(full)
        if metric is None:
            metric = Counter(full, doc or name.replace("_", " "), LABELS, registry=self.registry)
            self._custom[full] = metric
        if not isinstance(metric, Counter):
            raise ConfigError(f"metric {full} is a gauge, not a counter", field="metric", value=name)
        metric.labels(**self._labels).inc(float(amount))
        self.values[name] = self.values.get(name, 0.0) + float(amount)

    def gauges(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.gauge(name, value)

    def finish(self, *, outcome: str, duration_s: float) -> None:
        if outcome not in OUTCOMES:
            raise ConfigError(f"outcome {outcome!r} must be one of {OUTCOMES}", field="outcome", value=outcome)
        self._duration.labels(**self._labels).set(duration_s)
        for o in OUTCOMES:
            self._outcome.labels(**self._labels, outcome=o).set(1.0 if o == outcome else 0.0)
        self._last.labels(**self._labels).set(time.time())


@contextlib.contextmanager
def stage_run(
    *, pipeline: str, run_id: str, stage: str, step: str | None = None, sink: MetricsSink | None = None
) -> Iterator[StageMetrics]:
    """Time a stage, record its outcome, and hand its metrics to ``sink`` however it ends.

    A sink that fails (gateway down) is logged and never turns a successful stage into a failure.
    """
    metrics = StageMetrics(pipeline=pipeline, run_id=run_id, stage=stage, step=step)
    start = time.monotonic()
    outcome = "failure"
    try:
        yield metrics
        outcome = "success"
    finally:
        metrics.finish(outcome=outcome, duration_s=time.monotonic() - start)
        if sink is not None:
            try:
                sink.emit(metrics.registry, job=f"aptops-{pipeline}", run_id=run_id, stage=stage, step=metrics.step)
            except OSError as exc:
                log.warning("could not send metrics of stage %s to its sink: %s", stage, exc)
