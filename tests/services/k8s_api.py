"""A protocol-level stand-in for the few read-only Kubernetes API calls ``aptops doctor`` makes.

It serves ``GET`` on namespaced Secrets and PersistentVolumeClaims and ``list`` on Nodes with a label
selector, checks the bearer token the real ``kubernetes`` client sends from a kubeconfig, answers 404 /
403 with a ``Status`` object as the real API does, and records every request (verb and path) so a test can
assert that nothing but reads happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.services.http import LocalServer, json_reply


@dataclass
class ClusterState:
    token: str
    secrets: dict[str, set[str]] = field(default_factory=dict)  # namespace -> names
    forbidden_secrets: set[str] = field(default_factory=set)
    pvcs: dict[str, dict[str, str]] = field(default_factory=dict)  # namespace -> name -> phase
    nodes: list[dict[str, Any]] = field(default_factory=list)  # {"labels": {...}, "allocatable": {...}}
    requests: list[tuple[str, str]] = field(default_factory=list)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}


def _handler(state: ClusterState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            json_reply(self, code, body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            state.requests.append(("GET", url.path))
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                self._reply(401, _status(401, "Unauthorized", "Unauthorized"))
                return
            parts = url.path.strip("/").split("/")
            if parts[:2] == ["api", "v1"] and parts[2:] == ["nodes"]:
                wanted = dict(kv.split("=", 1) for kv in parse_qs(url.query).get("labelSelector", [""])[0].split(",")
                              if kv)
                items = [{"metadata": {"name": f"node-{i}", "labels": n["labels"]},
                          "status": {"allocatable": n["allocatable"]}}
                         for i, n in enumerate(state.nodes) if wanted.items() <= n["labels"].items()]
                self._reply(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": items})
                return
            if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"]:
                namespace, kind, name = parts[3], parts[4], parts[5]
                if kind == "secrets":
                    if name in state.forbidden_secrets:
                        self._reply(403, _status(403, "Forbidden", f'secrets "{name}" is forbidden'))
                    elif name in state.secrets.get(namespace, set()):
                        # the real API would return data too; doctor never looks at it
                        self._reply(200, {"kind": "Secret", "apiVersion": "v1",
                                          "metadata": {"name": name, "namespace": namespace}, "type": "Opaque"})
                    else:
                        self._reply(404, _status(404, "NotFound", f'secrets "{name}" not found'))
                    return
                if kind == "persistentvolumeclaims":
                    phase = state.pvcs.get(namespace, {}).get(name)
                    if phase is None:
                        self._reply(404, _status(404, "NotFound", f'persistentvolumeclaims "{name}" not found'))
                    else:
                        self._reply(200, {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                                          "metadata": {"name": name, "namespace": namespace},
                                          "spec": {}, "status": {"phase": phase}})
                    return
            self._reply(404, _status(404, "NotFound", f"no route {url.path}"))

        def _refuse(self) -> None:
            state.requests.append((self.command, urlsplit(self.path).path))
            self._reply(405, _status(405, "MethodNotAllowed", "the stand-in is read-only"))

        do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    return Handler


class KubernetesApiStandIn(LocalServer):
    """Serve the stand-in; :meth:`kubeconfig` writes a kubeconfig the real client can use."""

    def __init__(self, token: str = "k8s-test-token") -> None:
        self.state = ClusterState(token=token)
        super().__init__(_handler(self.state))

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "doctor", "user": {"token": self.state.token}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "doctor"}}],
        }))
        return path
