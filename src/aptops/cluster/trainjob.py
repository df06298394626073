"""Distributed training as a Kubeflow Trainer ``TrainJob``, launched from a pipeline task.

Kubeflow Trainer v2 runs a ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``) on a ``ClusterTrainingRuntime``
such as ``torch-distributed``: ``numNodes`` pods, each running the trainer command under torchrun with
``numProcPerNode`` processes (the runtime hands torchrun its rendezvous through ``PET_*`` variables). aptops
does not run pods of its own: a training task whose stage the cluster file sends to Trainer
(:class:`TrainJobSettings`) becomes a launcher that

1. copies its input artifacts to the shared cache volume (``<mount>/aptops/trainjobs/<job>/inputs``),
2. writes the stage config there and creates the ``TrainJob`` (the stage image, the stage's own CLI command
   under ``torchrun --no-python``, the cache volume, node selector, tolerations, pull secrets),
3. waits for it, logging progress, and fails with the job's own reason (image pull, OOMKilled, node loss),
   the last lines of the failed node's log and the ``kubectl`` line to read it all,
4. copies the model rank 0 wrote back into the task's output artifact, and deletes the job as configured.

The job's name is derived from the task's output path, so a launcher pod that restarts finds its job again
instead of starting a second one; the job's checkpoints live on the volume too (``$APTOPS_CHECKPOINT_DIR``),
so a node that restarts resumes from the newest whole checkpoint.

``trainjob_manifest`` builds the manifest with the ``kubeflow-trainer-api`` models, so what is created (and
what ``--dry-run`` prints) is what the Trainer's API schema accepts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.artifacts import RESULT_FILE, StageResult, atomic_output, read_json
from aptops.core.config import check_choice, check_range, to_dict
from aptops.core.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
#: the task's launch settings, JSON, set by ``ClusterSettings.apply`` on the tasks the cluster file sends to Trainer
TRAINJOB_ENV = "APTOPS_TRAINJOB"
STRATEGIES = ("ddp", "fsdp", "deepspeed")
TRAINING_STAGES = ("train", "distill", "prune", "multimodal")
#: the replicated job and container of the torch runtimes that the patches address
NODE = "node"
#: where a dry run's ConfigMap (the stage config) is mounted in each node
CONFIG_MOUNT = "/etc/aptops"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, kw_only=True)
class TrainJobSettings:
    """The cluster file's ``trainjob`` section: which stages train as Kubeflow Trainer jobs, and how.

    Attributes:
        enabled: train the listed stages as TrainJobs (off: each trains in its own pipeline pod).
        runtime: the ``ClusterTrainingRuntime`` (``torch-distributed``) the jobs reference.
        num_nodes: nodes (pods) per job.
        gpus_per_node: GPUs per node; one torchrun process per GPU.
        strategy: ``ddp`` (every GPU holds the model), ``fsdp`` (parameters, gradients and optimizer state
            sharded, each transformer block wrapped) or ``deepspeed`` (ZeRO stage 3), through TrainingArguments.
        stages: the stages that run as TrainJobs.
        keep: delete finished jobs ``never`` kept, kept ``on_failure`` (to read their pods), or ``always`` kept.
        timeout_minutes: fail (and stop the job) when it has not finished by then.
        poll_seconds: how often the launcher reads the job's status.
    """

    enabled: bool = False
    runtime: str = "torch-distributed"
    num_nodes: int = 1
    gpus_per_node: int = 1
    strategy: str = "ddp"
    stages: tuple[str, ...] = TRAINING_STAGES
    keep: str = "on_failure"
    timeout_minutes: int = 24 * 60
    poll_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.runtime):
            raise ConfigError(f"trainjob.runtime {self.runtime!r} is not a valid Kubernetes name", field="trainjob.runtime",
                              value=self.runtime)
        check_range("trainjob.num_nodes", self.num_nodes, min_value=1, max_value=1024)
        check_range("trainjob.gpus_per_node", self.gpus_per_node, min_value=0, max_value=64)
        check_choice("trainjob.strategy", self.strategy, STRATEGIES)
        check_choice("trainjob.keep", self.keep, ("never", "on_failure", "always"))
        check_range("trainjob.timeout_minutes", self.timeout_minutes, min_value=1, max_value=60 * 24 * 30)
        check_range("trainjob.poll_seconds", self.poll_seconds, min_value=0.1, max_value=600)
        for stage in self.stages:
            check_choice("trainjob.stages", stage, TRAINING_STAGES)


@dataclass(frozen=True, kw_only=True)
class TrainJobLaunch:
    """Everything a launcher needs to create a job: the cluster file's settings resolved for one stage."""

    settings: TrainJobSettings
    image: str
    namespace: str = ""  # empty: the launcher pod's own namespace
    gpu_resource: str = "nvidia.com/gpu"
    requests: Mapping[str, str] = field(default_factory=dict)  # per node, besides the GPUs
    limits: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, str], ...] = ()
    pull_secrets: tuple[str, ...] = ()
    service_account: str = ""
    pvc: str = ""
    mount_path: str = "/cache"
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # variable -> (Secret, key)

    def __post_init__(self) -> None:
        if not self.mount_path.startswith("/"):
            raise ConfigError("cache.mount_path must be an absolute path", field="cache.mount_path", value=self.mount_path)

    def to_json(self) -> str:
        return json.dumps(to_dict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainJobLaunch:
        from aptops.core.config import from_dict

        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"${TRAINJOB_ENV} is not JSON: {exc}", field=TRAINJOB_ENV) from None
        return from_dict(cls, data)


def launch_from_env(stage: str) -> TrainJobLaunch | None:
    """The launch settings the cluster file gave this task, if it trains ``stage`` as a TrainJob."""
    text = os.environ.get(TRAINJOB_ENV, "")
    if not text:
        return None
    launch = TrainJobLaunch.from_json(text)
    return launch if launch.settings.enabled and stage in launch.settings.stages else None


def job_name(stage: str, key: str) -> str:
    """A TrainJob name from the stage and a stable key (the task's output path): the same task, the same job."""
    return f"aptops-{stage}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def torchrun_command(argv: Sequence[str]) -> list[str]:
    """The node command: torchrun (rendezvous from the runtime's ``PET_*`` variables) over the ``aptops`` CLI."""
    return ["torchrun", "--no-python", "aptops", *argv]


def trainjob_manifest(launch: TrainJobLaunch, *, name: str, command: Sequence[str], stage: str,
                      labels: Mapping[str, str] | None = None, config_map: str = "") -> dict[str, Any]:
    """The ``TrainJob`` for ``command`` on ``launch``'s runtime, nodes, GPUs, image and volume.

    Built through the ``kubeflow-trainer-api`` models (a field they do not know is an error here, not on the
    cluster); returns the API dict, as created and as ``--dry-run`` prints it. ``config_map``: also mount that
    ConfigMap at :data:`CONFIG_MOUNT` (a dry run's stage config travels that way).
    """
    from kubeflow_trainer_api import models as m

    s = launch.settings
    if not _NAME.fullmatch(name):
        raise ConfigError(f"TrainJob name {name!r} is not a valid Kubernetes name", field="name", value=name)
    requests = dict(launch.requests)
    limits = dict(launch.limits)
    if s.gpus_per_node:
        requests[launch.gpu_resource] = limits[launch.gpu_resource] = str(s.gpus_per_node)
    env = [{"name": k, "value": v} for k, v in sorted(launch.env.items())]
    env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for k, (secret, key) in sorted(launch.secret_env.items())]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if launch.pvc:
        volumes.append({"name": "aptops-cache", "persistentVolumeClaim": {"claimName": launch.pvc}})
        mounts.append({"name": "aptops-cache", "mountPath": launch.mount_path})
    if config_map:
        volumes.append({"name": "aptops-config", "configMap": {"name": config_map}})
        mounts.append({"name": "aptops-config", "mountPath": CONFIG_MOUNT, "readOnly": True})
    pod_spec: dict[str, Any] = {}
    if volumes:
        pod_spec["volumes"] = volumes
        pod_spec["containers"] = [{"name": NODE, "volumeMounts": mounts}]
    if launch.node_selector:
        pod_spec["nodeSelector"] = dict(launch.node_selector)
    if launch.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in launch.tolerations]
    if launch.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": p} for p in launch.pull_secrets]
    if launch.service_account:
        pod_spec["serviceAccountName"] = launch.service_account
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, **({"namespace": launch.namespace} if launch.namespace else {}),
                     "labels": {"app.kubernetes.io/name": "aptops", "app.kubernetes.io/component": stage,
                                **dict(labels or {})}},
        "spec": {
            "runtimeRef": {"name": s.runtime, "kind": "ClusterTrainingRuntime", "apiGroup": GROUP},
            "trainer": {
                "image": launch.image,
                "command": list(command),
                "numNodes": s.num_nodes,
                "numProcPerNode": max(s.gpus_per_node, 1),
                "resourcesPerNode": {"requests": requests, "limits": limits},
                **({"env": env} if env else {}),
            },
            "activeDeadlineSeconds": s.timeout_minutes * 60,
        },
    }
    if pod_spec:
        body["spec"]["runtimePatches"] = [{
            "manager": "aptops.io/launcher",
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                {"name": NODE, "template": {"spec": {"template": {"spec": pod_spec}}}}]}}},
        }]
    job = m.TrainerV1alpha1TrainJob.from_dict(body)
    out = job.to_dict()
    if out != body:  # a field the models dropped: the API would not take it either
        raise ConfigError(f"the TrainJob for {stage} does not match the Trainer API schema (kubeflow-trainer-api "
                          f"{_version('kubeflow-trainer-api')}): {_diff(body, out)}", field="trainjob")
    return out


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _diff(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k not in b:
                return f"{path}.{k} is not a field"
            found = _diff(a[k], b[k], f"{path}.{k}")
            if found:
                return found
        return ""
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = _diff(x, y, f"{path}[{i}]")
            if found:
                return found
        return ""
    return "" if a == b else f"{path}: {a!r} became {b!r}"


def dry_run_manifests(launch: TrainJobLaunch, *, stage: str, argv: Sequence[str], output_dir: str,
                      config: Any) -> list[dict[str, Any]]:
    """What ``aptops <stage> ... --dry-run`` prints for ``kubectl apply -f -``: a ConfigMap holding the stage
    config (strategy set) and the TrainJob that mounts it and runs the stage's command on ``numNodes`` nodes.

    Paths in ``argv`` and ``output_dir`` are as the nodes see them (on the cache volume, or Hub ids).
    """
    name = job_name(stage, f"{output_dir}|{' '.join(argv)}")
    data = json.dumps(to_dict(strategy_config(config, launch.settings.strategy)), indent=1, sort_keys=True)
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"{name}-config", **({"namespace": launch.namespace} if launch.namespace else {}),
                               "labels": {"app.kubernetes.io/name": "aptops", "app.kubernetes.io/component": stage}},
                  "data": {"config.json": data}}
    command = torchrun_command([*argv, "--out", output_dir, "--config", f"{CONFIG_MOUNT}/config.json"])
    return [config_map, trainjob_manifest(launch, name=name, command=command, stage=stage, config_map=f"{name}-config")]


def strategy_config(config: Any, strategy: str) -> Any:
    """``config`` (a stage config with a training section) set to train with ``strategy``."""
    from aptops.core.config import with_overrides

    names = {f.name for f in dataclasses.fields(config)}
    if "strategy" in names:
        return with_overrides(config, {"strategy": strategy})
    if "training" in names:
        return with_overrides(config, {"training": {"strategy": strategy}})
    if strategy != "ddp":
        raise ConfigError(f"{type(config).__name__} trains with DDP only; set trainjob.strategy: ddp for it",
                          field="trainjob.strategy", value=strategy)
    return config


# ----------------------------------------------------------------------------------------------- launching


@dataclass
class _Api:
    custom: Any
    core: Any
    namespace: str


def _apis(launch: TrainJobLaunch) -> _Api:
    from kubernetes import client, config

    namespace = launch.namespace
    try:
        config.load_incluster_config()  # a pipeline pod: its ServiceAccount, its namespace
        sa_ns = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        namespace = namespace or (sa_ns.read_text().strip() if sa_ns.is_file() else "")
    except config.ConfigException:
        try:
            kubeconfig = os.environ.get("KUBECONFIG") or None  # read now: the client reads it once, at import
            config.load_kube_config(config_file=kubeconfig)
            _, current = config.list_kube_config_contexts(config_file=kubeconfig)
        except Exception as exc:  # kubernetes' loaders raise several types
            raise PipelineError(f"no Kubernetes credentials to create the TrainJob: {exc} (in a pod the "
                                "ServiceAccount is used; elsewhere $KUBECONFIG)") from None
        namespace = namespace or current.get("context", {}).get("namespace", "")
    return _Api(client.CustomObjectsApi(), client.CoreV1Api(), namespace or "default")


def run_distributed(stage: str, argv: Sequence[str], *, inputs: Sequence[str | Path], output_dir: str | Path,
                    config: Any, local: Callable[[], StageResult],
                    extra_outputs: Mapping[str, str | Path] | None = None) -> StageResult:
    """Run a training stage here (``local``) or, when the cluster file says so, as a Kubeflow Trainer job.

    Args:
        stage: ``train``, ``distill``, ``prune`` or ``multimodal``.
        argv: the stage's CLI command and inputs (``["train", "run", model, dataset]``); ``--out`` and
            ``--config`` are added here.
        inputs: the local paths in ``argv`` to stage on the shared volume (each replaced by its copy).
        output_dir: this task's model artifact; the job's model is copied here.
        config: the stage config; written to the volume for the job (with the strategy set).
        local: the in-pod run, used when the stage is not sent to Trainer.
        extra_outputs: ``{option: local folder}`` further outputs (``--heldout-out``) copied back.

    Raises:
        PipelineError: the job failed (its reason and log tail), timed out, or could not be created.
    """
    launch = launch_from_env(stage)
    if launch is None:
        return local()
    if not launch.pvc:
        raise ConfigError("a TrainJob needs the cache volume (cache.pvc in the cluster file): its nodes read the "
                          "inputs and write the model and checkpoints there", field="cache.pvc")
    name = job_name(stage, str(Path(output_dir).resolve()))
    work = Path(launch.mount_path) / "aptops" / "trainjobs" / name
    staged = _stage_inputs(inputs, work / "inputs")
    command_argv = [staged.get(str(a), str(a)) for a in argv]
    cfg_path = work / "config.json"
    cfg_path.write_text(json.dumps(to_dict(strategy_config(config, launch.settings.strategy)), indent=1),
                        encoding="utf-8")
    out = work / "out"
    command_argv += ["--out", str(out), "--config", str(cfg_path)]
    extra = {opt: work / f"extra-{i}" for i, opt in enumerate(extra_outputs or {})}
    for opt, path in extra.items():
        command_argv += [opt, str(path)]
    manifest = trainjob_manifest(launch, name=name, command=torchrun_command(command_argv), stage=stage)
    api = _apis(launch)
    _create_or_attach(api, manifest)
    ok = False
    try:
        _wait(api, name, launch.settings)
        ok = True
    finally:
        keep = launch.settings.keep == "always" or (launch.settings.keep == "on_failure" and not ok)
        if not keep:
            _delete(api, name)
        elif not ok:
            log.warning("TrainJob %s/%s kept for inspection: kubectl describe trainjob -n %s %s", api.namespace, name,
                        api.namespace, name)
    if not (out / RESULT_FILE).is_file():
        raise PipelineError(f"TrainJob {name} finished but wrote no complete model to {out} (no {RESULT_FILE}); "
                            f"read its logs: {_logs_hint(api.namespace, name)}")
    with atomic_output(output_dir) as tmp:  # never over what is there unless it may be replaced
        shutil.copytree(out, tmp, dirs_exist_ok=True)
    for opt, path in extra.items():
        if path.is_dir():
            shutil.copytree(path, Path(extra_outputs[opt]), dirs_exist_ok=True)  # type: ignore[index]
    data = read_json(Path(output_dir) / RESULT_FILE)
    shutil.rmtree(work, ignore_errors=True)  # inputs and the copy of the model; checkpoints went with success
    outputs = {k: str(v).replace(str(out), str(output_dir)) for k, v in data.get("outputs", {}).items()}
    return StageResult(data.get("stage", stage), outputs=outputs, metrics=data.get("metrics", {}),
                       details={**data.get("details", {}), "trainjob": name, "nodes": launch.settings.num_nodes,
                                "gpus_per_node": launch.settings.gpus_per_node, "strategy": launch.settings.strategy})


def _stage_inputs(inputs: Sequence[str | Path], folder: Path) -> dict[str, str]:
    """Copy each input (file or folder) to the shared volume once; a launcher that restarts reuses the copies."""
    staged = {}
    for i, src in enumerate(inputs):
        src = Path(src)
        dest = folder / f"{i}-{src.name}"
        done = folder / f".{i}.done"
        if not done.is_file():
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dest)
            else:
                shutil.copy2(src, dest)
            done.touch()
        staged[str(src)] = str(dest)
    return staged


def _create_or_attach(api: _Api, manifest: Mapping[str, Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    name = manifest["metadata"]["name"]
    try:
        api.custom.create_namespaced_custom_object(GROUP, VERSION, api.namespace, PLURAL, dict(manifest))
        log.info("created TrainJob %s/%s: %d node(s) x %s", api.namespace, name, manifest["spec"]["trainer"]["numNodes"],
                 manifest["spec"]["trainer"]["numProcPerNode"])
    except ApiException as exc:
        if exc.status == 409:
            log.info("TrainJob %s/%s exists (this task was restarted): waiting for it", api.namespace, name)
            return
        if exc.status == 404:
            raise PipelineError(f"the cluster has no TrainJob API ({GROUP}/{VERSION}): install Kubeflow Trainer, or set "
                                "trainjob.enabled: false in the cluster file (aptops doctor checks this)") from None
        if exc.status == 403:
            raise PipelineError(f"not allowed to create TrainJobs in namespace {api.namespace!r}: grant the pipeline's "
                                "service account create/get/delete on trainjobs.trainer.kubeflow.org (the Helm "
                                "chart's Role does when trainjob.enabled)") from None
        raise PipelineError(f"creating TrainJob {name} failed: {exc.status} {exc.reason}: {_api_message(exc)}") from None


def _api_message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")[:300]


def _logs_hint(namespace: str, name: str) -> str:
    return f"kubectl logs -n {namespace} -l jobset.sigs.k8s.io/jobset-name={name} --all-containers --tail=200"


# container reasons that will not get better by waiting
_FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                  "CreateContainerError"}


def _pod_problems(api: _Api, name: str) -> tuple[list[str], list[str]]:
    """(fatal problems now, any terminated-with-error reasons) of the job's pods."""
    pods = api.core.list_namespaced_pod(api.namespace, label_selector=f"jobset.sigs.k8s.io/jobset-name={name}").items
    fatal, failed = [], []
    for pod in pods:
        pname = pod.metadata.name
        status = pod.status
        if status and status.reason in {"Evicted", "NodeLost", "UnexpectedAdmissionError"}:
            failed.append(f"pod {pname}: {status.reason}: {status.message or ''}".strip())
        for cs in (status.container_statuses or []) if status else []:
            state = cs.state
            if state and state.waiting and state.waiting.reason in _FATAL_WAITING:
                fatal.append(f"pod {pname}: {state.waiting.reason}: {state.waiting.message or ''}".strip())
            term = (state.terminated if state and state.terminated else None) or (
                cs.last_state.terminated if cs.last_state and cs.last_state.terminated else None)
            if term and term.exit_code:
                failed.append(f"pod {pname}: container {cs.name} {term.reason or 'Error'} (exit code {term.exit_code})")
    return fatal, failed


def _log_tail(api: _Api, name: str, lines: int = 20) -> str:
    try:
        pods = api.core.list_namespaced_pod(api.namespace,
                                            label_selector=f"jobset.sigs.k8s.io/jobset-name={name}").items
        for pod in sorted(pods, key=lambda p: p.metadata.name):
            text = api.core.read_namespaced_pod_log(pod.metadata.name, api.namespace, container=NODE, tail_lines=lines)
            if text:
                return f"last lines of {pod.metadata.name}:\n{text.rstrip()}"
    except Exception as exc:  # the logs are a courtesy: the failure itself is reported either way
        return f"(logs not readable: {type(exc).__name__})"
    return ""


def _wait(api: _Api, name: str, settings: TrainJobSettings) -> None:
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + settings.timeout_minutes * 60
    started = time.monotonic()
    last = ""
    log.info("waiting for TrainJob %s (logs: %s)", name, _logs_hint(api.namespace, name))
    while True:
        try:
            job = api.custom.get_namespaced_custom_object(GROUP, VERSION, api.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                raise PipelineError(f"TrainJob {name} was deleted while it ran") from None
            raise PipelineError(f"reading TrainJob {name} failed: {exc.status} {exc.reason}") from None
        conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
                      if c.get("status") == "True"}
        if "Complete" in conditions:
            log.info("TrainJob %s complete after %.0f s", name, time.monotonic() - started)
            return
        fatal, failed = _pod_problems(api, name)
        if "Failed" in conditions or fatal:
            cond = conditions.get("Failed", {})
            reasons = [f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")] if cond else []
            detail = "; ".join([r for r in reasons if r] + fatal + failed) or "no reason given"
            raise PipelineError(f"TrainJob {name} failed: {detail}\n{_log_tail(api, name)}\n"
                                f"all logs: {_logs_hint(api.namespace, name)}")
        state = ", ".join(sorted(conditions)) or "Pending"
        if state != last:
            log.info("TrainJob %s: %s (%.0f s)", name, state, time.monotonic() - started)
            last = state
        if time.monotonic() > deadline:
            raise PipelineError(f"TrainJob {name} did not finish in {settings.timeout_minutes} minutes "
                                "(trainjob.timeout_minutes); it is stopped by its activeDeadlineSeconds")
        time.sleep(settings.poll_seconds)


def _delete(api: _Api, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        api.custom.delete_namespaced_custom_object(GROUP, VERSION, api.namespace, PLURAL, name,
                                                   propagation_policy="Foreground")
    except ApiException as exc:
        if exc.status != 404:
            log.warning("could not delete TrainJob %s: %s %s", name, exc.status, exc.reason)


def run_training_step(stage: str, argv: Sequence[str], *, output_dir: str | Path, config: Any,
                      local: Callable[[], StageResult], params: Mapping[str, Any],
                      extra_outputs: Mapping[str, str | Path] | None = None, step: str | None = None) -> StageResult:
    """A training component's run with its metrics (:func:`aptops.core.runtime.run_step` over ``params``, the
    component's ``locals()``): here, or as a Kubeflow Trainer job when the cluster file says so
    (:func:`run_distributed`; the inputs it stages are ``argv``'s values after the command)."""
    from aptops.core.runtime import run_step

    os.environ.setdefault("APTOPS_RUN_ID", params.get("run_id") or "local")
    inputs = [a for a in argv[2:] if not str(a).startswith("--")]
    return run_step(stage, step or argv[1], lambda: run_distributed(
        stage, argv, inputs=inputs, output_dir=output_dir, config=config, local=local, extra_outputs=extra_outputs),
        params)
