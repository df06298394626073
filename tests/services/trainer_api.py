"""A protocol-level stand-in for the Kubernetes API as Kubeflow Trainer v2 serves it, with a tiny controller.

It speaks what the real ``kubernetes`` client sends (bearer token from a kubeconfig, JSON bodies, ``Status``
errors) for:

- ``trainjobs.trainer.kubeflow.org/v1alpha1``: create (each body parsed strictly with the
  ``kubeflow-trainer-api`` models: a field they drop is a 422, an unknown runtime a 422, a second create of one
  name a 409), get, delete; every created body is kept in ``state.created`` for the test to read;
- the pods of a job (label ``jobset.sigs.k8s.io/jobset-name``) and their logs;
- what ``aptops doctor`` reads: API discovery of the group, ``clustertrainingruntimes`` (and the namespaced
  ``trainingruntimes`` the SDK looks for first), the Trainer's public ConfigMap, ``SelfSubjectAccessReview``.

The controller runs a created job the way the torch runtime does, on this machine: ``numNodes`` copies of the
trainer command, each with the ``PET_*`` variables torchrun reads (nodes, processes per node, node rank, master
address and port) and the job's env; the volume's mount path is a local folder the test chose. ``behaviour``
makes it fail instead, as clusters do: ``oom`` (node 0 OOMKilled, the job Failed) or ``image_pull``
(ErrImagePull, the job never starts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.services.http import LocalServer, json_reply
from tests.services.servers import free_port

GROUP, VERSION = "trainer.kubeflow.org", "v1alpha1"
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"


@dataclass
class TrainerState:
    token: str
    runtimes: set[str] = field(default_factory=lambda: {"torch-distributed"})
    installed: bool = True
    allowed: set[str] = field(default_factory=lambda: {"create", "get", "delete", "list", "watch"})
    behaviour: str = "run"  # run | oom | image_pull
    created: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # job -> pods
    logs: dict[str, str] = field(default_factory=dict)  # pod -> text
    deleted: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    log_dir: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _container(state: dict[str, Any], image: str) -> dict[str, Any]:
    return {"name": "node", "image": image, "imageID": "", "ready": "running" in state, "restartCount": 0,
            "state": state}


def _pod(job: str, rank: int, phase: str, container: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job}-node-0-{rank}", "labels": {JOBSET_LABEL: job}},
            "status": {"phase": phase, "containerStatuses": [container]}}


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": _now()}


def _run_job(state: TrainerState, name: str, body: dict[str, Any]) -> None:
    """The torch runtime on one machine: one process per node with the PET_* rendezvous variables."""
    trainer = body["spec"]["trainer"]
    image = trainer["image"]
    nodes = trainer.get("numNodes", 1)
    if state.behaviour == "image_pull":
        with state.lock:
            state.pods[name] = [_pod(name, r, "Pending", _container(
                {"waiting": {"reason": "ErrImagePull", "message": f'pull access denied for {image}'}}, image))
                for r in range(nodes)]
        return
    if state.behaviour == "oom":
        with state.lock:
            state.pods[name] = [_pod(name, 0, "Failed", _container(
                {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, image))]
            state.logs[f"{name}-node-0-0"] = "loading model\nKilled\n"
            state.jobs[name]["status"] = {"conditions": [_condition(
                "Failed", "FailedJob", "jobset failed: job node-0 has failed (backoff limit reached)")]}
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    env.update({e["name"]: e["value"] for e in trainer.get("env", []) if "value" in e})
    port = free_port()
    procs = []
    assert state.log_dir is not None
    for rank in range(nodes):
        node_env = {**env, "PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode", 1)),
                    "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
        log_path = state.log_dir / f"{name}-node-0-{rank}.log"
        procs.append((subprocess.Popen(trainer["command"] + trainer.get("args", []), env=node_env,
                                       stdout=log_path.open("w"), stderr=subprocess.STDOUT), log_path))
    with state.lock:
        state.pods[name] = [_pod(name, r, "Running", _container({"running": {"startedAt": _now()}}, image))
                            for r in range(nodes)]
        state.jobs[name].setdefault("status", {})["conditions"] = []
    codes = [p.wait() for p, _ in procs]
    with state.lock:
        for rank, (code, (_, log_path)) in enumerate(zip(codes, procs, strict=True)):
            state.logs[f"{name}-node-0-{rank}"] = log_path.read_text(errors="replace")
            state.pods[name][rank] = _pod(name, rank, "Succeeded" if code == 0 else "Failed", _container(
                {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}, image))
        if name in state.jobs:
            state.jobs[name]["status"] = {"conditions": [
                _condition("Complete", "JobsCompleted", "jobset completed successfully") if not any(codes) else
                _condition("Failed", "FailedJob", f"jobset failed: node exit codes {codes}")]}


def _handler(state: TrainerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: Any) -> None:
            json_reply(self, code, body)

        def _authorized(self) -> bool:
            state.requests.append((self.command, urlsplit(self.path).path))
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                self._reply(401, _status(401, "Unauthorized", "Unauthorized"))
                return False
            return True

        def _body(self) -> Any:
            return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

        def do_GET(self) -> None:
            if not self._authorized():
                return
            url = urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            query = parse_qs(url.query)
            if parts == ["apis", GROUP, VERSION]:
                if not state.installed:
                    self._reply(404, _status(404, "NotFound", "the server could not find the requested resource"))
                    return
                self._reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{GROUP}/{VERSION}",
                                  "resources": [{"name": n, "singularName": "", "namespaced": ns, "kind": k,
                                                 "verbs": ["create", "get", "list", "delete"]}
                                                for n, ns, k in (("trainjobs", True, "TrainJob"),
                                                                 ("trainingruntimes", True, "TrainingRuntime"),
                                                                 ("clustertrainingruntimes", False,
                                                                  "ClusterTrainingRuntime"))]})
                return
            if parts[:4] == ["apis", GROUP, VERSION, "clustertrainingruntimes"] and len(parts) == 5:
                if state.installed and parts[4] in state.runtimes:
                    self._reply(200, _runtime(parts[4]))
                else:
                    self._reply(404, _status(404, "NotFound", f'clustertrainingruntimes "{parts[4]}" not found'))
                return
            if parts[:3] == ["apis", GROUP, VERSION] and len(parts) >= 6 and parts[3] == "namespaces":
                kind = parts[5]
                if kind == "trainingruntimes":
                    self._reply(404, _status(404, "NotFound", "trainingruntimes not found"))
                    return
                if kind == "trainjobs" and len(parts) == 7:
                    with state.lock:
                        job = state.jobs.get(parts[6])
                        body = json.loads(json.dumps(job)) if job else None
                    if body is None:
                        self._reply(404, _status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{parts[6]}" not found'))
                    else:
                        self._reply(200, body)
                    return
            if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5:
                if parts[4] == "pods" and len(parts) == 5:
                    selector = query.get("labelSelector", [""])[0]
                    job = selector.split("=", 1)[1] if selector.startswith(f"{JOBSET_LABEL}=") else ""
                    with state.lock:
                        items = json.loads(json.dumps(state.pods.get(job, [])))
                    self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
                    return
                if parts[4] == "pods" and len(parts) == 7 and parts[6] == "log":
                    text = state.logs.get(parts[5], "")
                    tail = int(query.get("tailLines", ["0"])[0] or 0)
                    if tail:
                        text = "\n".join(text.splitlines()[-tail:]) + "\n"
                    data = text.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if parts[4] == "configmaps" and parts[5] == "kubeflow-trainer-public":
                    self._reply(200, {"kind": "ConfigMap", "apiVersion": "v1",
                                      "metadata": {"name": parts[5], "namespace": parts[3]},
                                      "data": {"kubeflow_trainer_version": "v2.1.0"}})
                    return
            self._reply(404, _status(404, "NotFound", f"no route {url.path}"))

        def do_POST(self) -> None:
            if not self._authorized():
                return
            parts = urlsplit(self.path).path.strip("/").split("/")
            body = self._body()
            if parts == ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"]:
                attrs = body.get("spec", {}).get("resourceAttributes", {})
                allowed = attrs.get("verb") in state.allowed
                self._reply(201, {**body, "status": {"allowed": allowed}})
                return
            if parts[:4] == ["apis", GROUP, VERSION, "namespaces"] and len(parts) == 6 and parts[5] == "trainjobs":
                if not state.installed:
                    self._reply(404, _status(404, "NotFound", "the server could not find the requested resource"))
                    return
                if "create" not in state.allowed:
                    self._reply(403, _status(403, "Forbidden", "trainjobs.trainer.kubeflow.org is forbidden"))
                    return
                problem = _invalid(body, state)
                if problem:
                    self._reply(422, _status(422, "Invalid", problem))
                    return
                name = body["metadata"]["name"]
                with state.lock:
                    if name in state.jobs:
                        self._reply(409, _status(409, "AlreadyExists", f'trainjobs "{name}" already exists'))
                        return
                    state.created.append(body)
                    state.jobs[name] = {**body, "metadata": {**body["metadata"], "namespace": parts[4],
                                                             "uid": f"uid-{len(state.created)}"}}
                threading.Thread(target=_run_job, args=(state, name, body), daemon=True).start()
                self._reply(201, state.jobs[name])
                return
            self._reply(404, _status(404, "NotFound", "no route"))

        def do_DELETE(self) -> None:
            if not self._authorized():
                return
            parts = urlsplit(self.path).path.strip("/").split("/")
            if parts[:4] == ["apis", GROUP, VERSION, "namespaces"] and len(parts) == 7 and parts[5] == "trainjobs":
                with state.lock:
                    job = state.jobs.pop(parts[6], None)
                    state.deleted.append(parts[6])
                if job is None:
                    self._reply(404, _status(404, "NotFound", "not found"))
                else:
                    self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                return
            self._reply(404, _status(404, "NotFound", "no route"))

    return Handler


def _invalid(body: dict[str, Any], state: TrainerState) -> str:
    """What the Trainer's API server would refuse in a TrainJob body: what its schema does not hold, an
    unknown runtime, a missing command."""
    from kubeflow_trainer_api import models

    try:
        parsed = models.TrainerV1alpha1TrainJob.from_dict(body).to_dict()
    except Exception as exc:  # pydantic's ValidationError and friends
        return f"TrainJob does not parse: {exc}"
    if parsed != body:
        return "TrainJob holds fields the schema does not know"
    if body.get("apiVersion") != f"{GROUP}/{VERSION}" or body.get("kind") != "TrainJob":
        return "wrong apiVersion/kind"
    ref = body["spec"]["runtimeRef"]["name"]
    if ref not in state.runtimes:
        return f'ClusterTrainingRuntime "{ref}" not found'
    if not body["spec"].get("trainer", {}).get("command"):
        return "spec.trainer.command is required for a custom trainer"
    return ""


def _runtime(name: str) -> dict[str, Any]:
    """A ClusterTrainingRuntime as the Trainer's torch-distributed one looks (what the kubeflow SDK reads)."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterTrainingRuntime",
            "metadata": {"name": name, "labels": {"trainer.kubeflow.org/framework": "torch"}},
            "spec": {"mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}},
                     "template": {"spec": {"replicatedJobs": [{"name": "node", "replicas": 1, "template": {
                         "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                         "spec": {"template": {"spec": {"containers": [
                             {"name": "node", "image": "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime",
                              "command": ["torchrun"]}]}}}}}]}}}}


class TrainerApiStandIn(LocalServer):
    """Serve the stand-in; :meth:`kubeconfig` writes a kubeconfig the real client can use."""

    def __init__(self, log_dir: Path, token: str = "trainer-test-token") -> None:
        self.state = TrainerState(token=token, log_dir=log_dir)
        super().__init__(_handler(self.state))

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "launcher", "user": {"token": self.state.token}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "launcher",
                                                          "namespace": "ml"}}],
        }))
        return path
