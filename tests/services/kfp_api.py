"""A protocol-level stand-in for the KFP v2beta1 REST API (no KFP server can run here).

It answers the calls ``kfp.Client`` makes to submit a run (healthz, experiments, runs) and to register
pipelines (list by name, multipart upload of a pipeline and of a version, list versions), checks the bearer
token on each, and records what the real client sent so tests can inspect the pipeline spec.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.services.http import LocalServer, json_reply


@dataclass
class KfpApiState:
    token: str | None
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    rejected: int = 0


def _handler(state: KfpApiState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            json_reply(self, code, body)

        def _authorised(self) -> bool:
            if state.token is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {state.token}":
                return True
            state.rejected += 1
            self._reply(401, {"error": "unauthenticated", "code": 16})
            return False

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            state.requests.append(("GET", url.path))
            if not self._authorised():
                return
            if url.path == "/apis/v2beta1/healthz":
                self._reply(200, {"multi_user": False})
            elif url.path == "/apis/v2beta1/experiments":
                flt = json.loads(parse_qs(url.query).get("filter", ["{}"])[0] or "{}")
                names = [p.get("stringValue") for p in flt.get("predicates", [])]
                found = [e for e in state.experiments.values() if not names or e["display_name"] in names]
                self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
            elif url.path == "/apis/v2beta1/pipelines":
                flt = json.loads(parse_qs(url.query).get("filter", ["{}"])[0] or "{}")
                names = [p.get("string_value") or p.get("stringValue") for p in flt.get("predicates", [])]
                found = [p for p in state.pipelines.values() if not names or p["display_name"] in names]
                self._reply(200, {"pipelines": found, "total_size": len(found)} if found else {})
            elif url.path.startswith("/apis/v2beta1/pipelines/") and url.path.endswith("/versions"):
                pipeline_id = url.path.split("/")[4]
                if pipeline_id not in state.pipelines:
                    self._reply(404, {"error": f"no pipeline {pipeline_id}"})
                    return
                versions = state.versions[pipeline_id]
                self._reply(200, {"pipeline_versions": versions, "total_size": len(versions)} if versions else {})
            else:
                self._reply(404, {"error": f"no route {url.path}"})

        def _upload(self, query: dict[str, list[str]]) -> dict[str, Any] | None:
            """The pipeline spec of a multipart ``uploadfile`` (None after replying 400)."""
            length = int(self.headers.get("Content-Length", "0"))
            raw = b"Content-Type: " + self.headers.get("Content-Type", "").encode() + b"\r\n\r\n" + self.rfile.read(length)
            message = BytesParser(policy=HTTP).parsebytes(raw)
            parts = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "uploadfile"]
            if not parts:
                self._reply(400, {"error": "no uploadfile part"})
                return None
            import yaml

            docs = list(yaml.safe_load_all(parts[0].get_payload(decode=True)))
            if not docs or "pipelineInfo" not in docs[0]:
                self._reply(400, {"error": "the upload is not a compiled pipeline"})
                return None
            return docs[0]

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            state.requests.append(("POST", url.path))
            if not self._authorised():
                return
            query = parse_qs(url.query)
            if url.path in ("/apis/v2beta1/pipelines/upload", "/apis/v2beta1/pipelines/upload_version"):
                spec = self._upload(query)
                if spec is None:
                    return
                name = query.get("name", [""])[0]
                if url.path.endswith("/upload"):
                    if any(p["display_name"] == name for p in state.pipelines.values()):
                        self._reply(409, {"error": f"pipeline {name} already exists"})
                        return
                    pipeline = {"pipeline_id": str(uuid.uuid4()), "display_name": name,
                                "description": query.get("description", [""])[0]}
                    state.pipelines[pipeline["pipeline_id"]] = pipeline
                    state.versions[pipeline["pipeline_id"]] = []
                    pipeline_id, version_name = pipeline["pipeline_id"], name
                else:
                    pipeline_id = query.get("pipelineid", [""])[0]
                    if pipeline_id not in state.pipelines:
                        self._reply(404, {"error": f"no pipeline {pipeline_id}"})
                        return
                    version_name = name
                    if any(v["display_name"] == name for v in state.versions[pipeline_id]):
                        self._reply(409, {"error": f"version {name} already exists"})
                        return
                version = {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()),
                           "display_name": version_name, "pipeline_spec": spec}
                state.versions[pipeline_id].append(version)
                self._reply(200, state.pipelines[pipeline_id] if url.path.endswith("/upload") else version)
                return
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if url.path == "/apis/v2beta1/experiments":
                exp = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
                       "namespace": body.get("namespace") or ""}
                state.experiments[exp["experiment_id"]] = exp
                self._reply(200, exp)
            elif url.path == "/apis/v2beta1/runs":
                if "pipeline_spec" not in body or body.get("experiment_id") not in state.experiments:
                    self._reply(400, {"error": "a run needs a pipeline_spec and a known experiment_id"})
                    return
                run = {"run_id": str(uuid.uuid4()), **body, "state": "PENDING"}
                state.runs.append(run)
                self._reply(200, run)
            else:
                self._reply(404, {"error": f"no route {url.path}"})

    return Handler


class KfpApiStandIn(LocalServer):
    """Serve the stand-in on 127.0.0.1 on a free port; ``url`` is what ``kfp.Client(host=...)`` takes."""

    def __init__(self, token: str | None = None) -> None:
        self.state = KfpApiState(token=token)
        super().__init__(_handler(self.state))
