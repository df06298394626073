"""A protocol-level stand-in for the KFP v2beta1 REST API (no KFP server can run here).

It answers the calls ``kfp.Client`` makes to submit a run (healthz, experiments, runs), checks the
bearer token on each, and records what the real client sent so tests can inspect the pipeline spec.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.services.http import LocalServer


@dataclass
class KfpApiState:
    token: str | None
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    rejected: int = 0


def _handler(state: KfpApiState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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
            else:
                self._reply(404, {"error": f"no route {url.path}"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            state.requests.append(("POST", url.path))
            if not self._authorised():
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
