"""A protocol-level stand-in for Kubeflow Model Registry's REST API (``/api/model_registry/v1``), the part the
``model-registry`` Python client (0.3.x) uses to register, find and list models (the registry needs a database and
a Go server, neither of which runs here).

Endpoints: ``GET /registered_models`` (the client's connection check; paged), ``GET /registered_model?name=``,
``POST /registered_models``, ``GET /registered_models/{id}/versions``, ``GET /model_version?name=&parentResourceId=``,
``POST /model_versions``, ``GET /model_versions/{id}/artifacts``, ``POST /model_versions/{id}/artifacts``,
``GET /model_artifact?name=&parentResourceId=``. It checks what the client sends as the server would: a Bearer
token when one is set (401 otherwise), required fields, a version's parent model exists, names unique within
their parent (409), ``artifactType`` ``model-artifact``, every custom property a ``Metadata<Type>Value`` holding
the matching ``<type>_value``. ``state.requests`` keeps every request (method, path, body) as received.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.services.http import LocalServer, json_reply

PREFIX = "/api/model_registry/v1"
_VALUE_KEYS = {"MetadataStringValue": ("string_value", str), "MetadataDoubleValue": ("double_value", float),
               "MetadataIntValue": ("int_value", str), "MetadataBoolValue": ("bool_value", bool)}


@dataclass
class RegistryState:
    token: str | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    links: dict[str, list[str]] = field(default_factory=dict)  # version id -> artifact ids
    requests: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    ids: Any = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def writes(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] in ("POST", "PATCH")]


class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _check_properties(body: dict[str, Any]) -> None:
    for key, value in (body.get("customProperties") or {}).items():
        kind = value.get("metadataType")
        if kind not in _VALUE_KEYS:
            raise Refused(400, f"customProperties.{key}: unknown metadataType {kind!r}")
        name, typ = _VALUE_KEYS[kind]
        if not isinstance(value.get(name), typ) or set(value) != {"metadataType", name}:
            raise Refused(400, f"customProperties.{key}: a {kind} holds exactly {name} ({typ.__name__})")


def _handler(state: RegistryState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            body = json.loads(raw) if raw else None
            with state.lock:
                state.requests.append({"method": self.command, "path": parts.path, "query": query, "body": body})
                try:
                    if state.token is not None and self.headers.get("Authorization") != f"Bearer {state.token}":
                        raise Refused(401, "unauthorized: a Bearer token is required")
                    if not parts.path.startswith(PREFIX + "/"):
                        raise Refused(404, f"no such path {parts.path}")
                    code, out = self._route(parts.path[len(PREFIX) + 1:].split("/"), query, body)
                except Refused as exc:
                    state.refused.append(f"{self.command} {parts.path}: {exc}")
                    return json_reply(self, exc.code, {"code": str(exc.code), "message": str(exc)})
            json_reply(self, code, out)

        do_GET = do_POST = do_PATCH = _serve

        def _route(self, seg: list[str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            m = self.command
            if seg == ["registered_models"] and m == "GET":
                return 200, _page(list(state.models.values()), q)
            if seg == ["registered_models"] and m == "POST":
                return 201, _create_model(body)
            if seg == ["registered_model"] and m == "GET":
                return 200, _find(state.models.values(), q, parent_key=None)
            if len(seg) == 3 and seg[0] == "registered_models" and seg[2] == "versions" and m == "GET":
                _get(state.models, seg[1], "registered model")
                return 200, _page([v for v in state.versions.values() if v["registeredModelId"] == seg[1]], q)
            if seg == ["model_versions"] and m == "POST":
                return 201, _create_version(body)
            if seg == ["model_version"] and m == "GET":
                return 200, _find(state.versions.values(), q, parent_key="registeredModelId")
            if len(seg) == 3 and seg[0] == "model_versions" and seg[2] == "artifacts":
                _get(state.versions, seg[1], "model version")
                if m == "GET":
                    return 200, _page([state.artifacts[a] for a in state.links.get(seg[1], [])], q)
                if m == "POST":
                    return _upsert_artifact(seg[1], body)
            if seg == ["model_artifact"] and m == "GET":
                parent = q.get("parentResourceId")
                pool = [state.artifacts[a] for a in state.links.get(parent, [])] if parent else state.artifacts.values()
                return 200, _find(pool, q, parent_key=None)
            raise Refused(404 if m == "GET" else 405, f"{m} /{'/'.join(seg)} is not served by the stand-in")

    def _stamp(kind: dict[str, Any]) -> dict[str, Any]:
        now = str(int(time.time() * 1000))
        return {"id": str(next(state.ids)), "createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now, **kind}

    def _need(body: Any, *keys: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a JSON object")
        missing = [k for k in keys if not body.get(k)]
        if missing:
            raise Refused(422, f"missing required field(s): {', '.join(missing)}")
        if "id" in body:
            raise Refused(400, "id is assigned by the server")
        _check_properties(body)
        return body

    def _create_model(body: Any) -> dict[str, Any]:
        body = _need(body, "name")
        if any(x["name"] == body["name"] for x in state.models.values()):
            raise Refused(409, f"registered model {body['name']!r} already exists")
        rm = _stamp({"state": "LIVE", **body})
        state.models[rm["id"]] = rm
        return rm

    def _create_version(body: Any) -> dict[str, Any]:
        body = _need(body, "name", "registeredModelId")
        _get(state.models, body["registeredModelId"], "registered model")
        if any(v["name"] == body["name"] and v["registeredModelId"] == body["registeredModelId"]
               for v in state.versions.values()):
            raise Refused(409, f"model version {body['name']!r} already exists in that registered model")
        mv = _stamp({"state": "LIVE", **body})
        state.versions[mv["id"]] = mv
        return mv

    def _upsert_artifact(version_id: str, body: Any) -> tuple[int, dict[str, Any]]:
        body = _need(body, "artifactType", "uri")
        if body["artifactType"] != "model-artifact":
            raise Refused(400, f"the stand-in keeps model artifacts only, not {body['artifactType']!r}")
        names = {state.artifacts[a]["name"] for a in state.links.get(version_id, [])}
        if body.get("name") in names:
            raise Refused(409, f"artifact {body.get('name')!r} already exists in that version")
        ma = _stamp({"state": "UNKNOWN", **body})
        state.artifacts[ma["id"]] = ma
        state.links.setdefault(version_id, []).append(ma["id"])
        return 201, ma

    return Handler


def _get(table: dict[str, dict[str, Any]], key: str, what: str) -> dict[str, Any]:
    if key not in table:
        raise Refused(404, f"{what} {key} not found")
    return table[key]


def _find(rows: Any, q: dict[str, str], *, parent_key: str | None) -> dict[str, Any]:
    if not q.get("name") and not q.get("externalId"):
        raise Refused(400, "find needs name or externalId")
    if parent_key and q.get("name") and not q.get("parentResourceId"):
        raise Refused(400, "find by name needs parentResourceId")
    for row in rows:
        if (q.get("name") in (None, row.get("name")) and q.get("externalId") in (None, row.get("externalId"))
                and (not parent_key or row.get(parent_key) == q.get("parentResourceId"))):
            return row
    raise Refused(404, f"no entity with {q}")


def _page(rows: list[dict[str, Any]], q: dict[str, str]) -> dict[str, Any]:
    size = int(q.get("pageSize") or 100)
    start = int(q.get("nextPageToken") or 0)
    items = rows[start:start + size]
    more = start + size < len(rows)
    return {"items": items, "size": len(items), "pageSize": size, "nextPageToken": str(start + size) if more else ""}


class ModelRegistryStandIn(LocalServer):
    """``with ModelRegistryStandIn(token="t") as mr:`` serves the API at ``mr.url``; ``mr.state`` holds what it got."""

    def __init__(self, token: str | None = None) -> None:
        self.state = RegistryState(token=token)
        super().__init__(_handler(self.state))
