"""A protocol-level stand-in for the ModelScope hub (no ModelScope server is reachable here).

It speaks the ``/api/v1`` subset that the real ``modelscope`` / ``modelscope_hub`` client uses for
backups (``MODELSCOPE_ENDPOINT`` points the client at it): repo create and info, the LFS batch API
(``/api/v1/repos/{type}s/{repo}/info/lfs/objects/batch``) with a PUT to the returned URL, the JSON commit
API (``/api/v1/repos/{type}s/{repo}/commit/{revision}``: ``create`` / ``update`` / ``delete`` actions,
``normal`` files inline as base64, ``lfs`` files by sha256), file listing (``repo/files``), file download
(``repo?FilePath=``), revisions and tags. Answers use ModelScope's envelope
(``{"Code", "Data", "Message", "Success", "RequestId"}``).

What arrives is checked: every call must carry the token (``Authorization: Bearer`` or the
``m_session_id`` cookie; 401 otherwise, private repos answer 404 to strangers), every uploaded blob's
sha256 and size are recomputed (mismatch → 400), and a commit may only name LFS blobs that arrived.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.services.http import LocalServer, byte_range


@dataclass
class MsRepo:
    repo_id: str
    private: bool
    branches: dict[str, list[dict[str, tuple[bytes, bool]]]] = field(default_factory=dict)  # branch -> history
    tags: dict[str, dict[str, tuple[bytes, bool]]] = field(default_factory=dict)

    def files(self, revision: str) -> dict[str, tuple[bytes, bool]] | None:
        if revision in self.branches:
            return self.branches[revision][-1]
        return self.tags.get(revision)


@dataclass
class MsState:
    token: str
    user: str
    repos: dict[tuple[str, str], MsRepo] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    blobs_verified: list[str] = field(default_factory=list)
    commits: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Err(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _handler(state: MsState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _ok(self, data: Any = None) -> None:
            self._send(200, json.dumps({"Code": 200, "Data": data if data is not None else {}, "Message": "success",
                                        "Success": True, "RequestId": uuid.uuid4().hex}).encode())

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _user(self, required: bool) -> str | None:
            auth = self.headers.get("Authorization", "")
            cookie = dict(part.strip().split("=", 1) for part in self.headers.get("Cookie", "").split(";")
                          if "=" in part)
            token = auth.removeprefix("Bearer ").strip() if auth else cookie.get("m_session_id")
            if not token:
                if required:
                    raise _Err(401, "login required: no token sent")
                return None
            if token != state.token:
                raise _Err(401, "invalid access token")
            return state.user

        def _repo(self, kind: str, repo_id: str, *, write: bool = False) -> MsRepo:
            user = self._user(required=write)
            repo = state.repos.get((kind, repo_id))
            if repo is None or (repo.private and user is None):
                raise _Err(404, f"repo {repo_id} not found")
            if write and repo_id.split("/")[0] != user:
                raise _Err(403, f"no write permission on {repo_id}")
            return repo

        def _dispatch(self) -> None:
            url = urlsplit(self.path)
            path, query = unquote(url.path), dict(parse_qsl(url.query))
            state.requests.append((self.command, path))
            try:
                with state.lock:
                    self._route(path, query)
            except _Err as err:
                state.refused.append(f"{self.command} {path}: {err.code}")
                self._send(err.code, json.dumps({"Code": err.code, "Message": err.message, "Success": False,
                                                 "RequestId": uuid.uuid4().hex}).encode())

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

        def _route(self, path: str, query: dict[str, str]) -> None:
            parts = path.strip("/").split("/")
            m = self.command
            if parts[:2] == ["blob", "upload"] and m == "PUT":  # /blob/upload/{oid}?size=
                return self._put_blob(parts[2], int(query["size"]))
            if parts[:2] != ["api", "v1"]:
                raise _Err(404, f"no route for {m} {path}")
            rest = parts[2:]
            if rest in (["models"], ["datasets"]) and m == "POST":
                return self._create(rest[0][:-1], json.loads(self._body()))
            if rest[:1] == ["repos"] and len(rest) >= 5:  # repos/{type}s/{o}/{n}/...
                kind, repo_id, tail = rest[1][:-1], "/".join(rest[2:4]), rest[4:]
                if tail[:4] == ["info", "lfs", "objects", "batch"] and m == "POST":
                    return self._batch(self._repo(kind, repo_id, write=True), json.loads(self._body()))
                if tail[:1] == ["commit"] and m == "POST":
                    return self._commit(self._repo(kind, repo_id, write=True), "/".join(tail[1:]) or "master",
                                        json.loads(self._body()))
            if len(rest) >= 3 and rest[0] in ("models", "datasets"):
                kind, repo_id, tail = rest[0][:-1], "/".join(rest[1:3]), rest[3:]
                if not tail and m == "GET":
                    repo = self._repo(kind, repo_id)
                    return self._ok({"Path": repo_id.split("/")[0], "Name": repo_id.split("/")[1],
                                     "Visibility": 1 if repo.private else 5, "Id": hash(repo_id) & 0xFFFF})
                if tail == ["repo", "files"] and m == "GET":
                    return self._files(self._repo(kind, repo_id), query)
                if tail == ["repo"] and m in ("GET", "HEAD"):
                    return self._raw(self._repo(kind, repo_id), query)
                if tail == ["revisions"] and m == "GET":
                    repo = self._repo(kind, repo_id)
                    return self._ok({"RevisionMap": {
                        "Branches": [{"Revision": b, "CreatedAt": int(time.time())} for b in repo.branches],
                        "Tags": [{"Revision": t, "CreatedAt": int(time.time())} for t in repo.tags]}})
                if tail == ["repo", "tag"] and m == "POST":
                    repo = self._repo(kind, repo_id, write=True)
                    body = json.loads(self._body())
                    if not body.get("TagName") or not body.get("Ref"):
                        raise _Err(400, "TagName and Ref are required")
                    tag, rev = body["TagName"], body["Ref"]
                    files = repo.files(rev)
                    if files is None:
                        raise _Err(404, f"revision {rev} not found")
                    if tag in repo.tags:
                        raise _Err(409, f"tag {tag} exists")
                    repo.tags[tag] = dict(files)
                    return self._ok({})
            raise _Err(404, f"no route for {m} {path}")

        def _create(self, kind: str, body: dict[str, Any]) -> None:
            user = self._user(required=True)
            if body.get("Path") != user:
                raise _Err(403, f"no permission to create repos under {body.get('Path')}")
            repo_id = f"{body['Path']}/{body['Name']}"
            if (kind, repo_id) in state.repos:
                raise _Err(409, f"repo {repo_id} already exists")
            # ModelScope's visibility codes: 1 private, 3 internal, 5 public
            repo = MsRepo(repo_id, private=int(body.get("Visibility", 5)) != 5)
            repo.branches["master"] = [{}]
            state.repos[(kind, repo_id)] = repo
            self._ok({"Path": body["Path"], "Name": body["Name"]})

        def _batch(self, repo: MsRepo, body: dict[str, Any]) -> None:
            base = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
            objects = []
            for obj in body.get("objects", []):
                entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in state.blobs:
                    entry["actions"] = {"upload": {"href": f"{base}/blob/upload/{obj['oid']}?size={obj['size']}"}}
                objects.append(entry)
            self._ok({"objects": objects})

        def _put_blob(self, oid: str, size: int) -> None:
            self._user(required=True)
            data = self._body()
            if hashlib.sha256(data).hexdigest() != oid or len(data) != size:
                raise _Err(400, f"blob sha256/size mismatch for {oid}")
            state.blobs[oid] = data
            state.blobs_verified.append(oid)
            self._ok({"oid": oid})

        def _commit(self, repo: MsRepo, revision: str, body: dict[str, Any]) -> None:
            if revision not in repo.branches:
                raise _Err(404, f"branch {revision} not found")
            if not body.get("commit_message"):
                raise _Err(400, "commit_message is required")
            files = dict(repo.branches[revision][-1])
            for action in body.get("actions", []):
                kind, path = action["action"], action["path"]
                if kind == "delete":
                    if files.pop(path, None) is None:
                        raise _Err(404, f"{path} does not exist")
                    continue
                if kind not in ("create", "update"):
                    raise _Err(400, f"unknown action {kind!r}")
                if action.get("type") == "lfs":
                    data = state.blobs.get(action["sha256"])
                    if data is None or len(data) != action["size"]:
                        raise _Err(400, f"lfs blob {action['sha256']} for {path} was never uploaded")
                    files[path] = (data, True)
                else:
                    data = base64.b64decode(action.get("content", ""))
                    if "size" in action and len(data) != int(action["size"]):
                        raise _Err(400, f"{path}: content is {len(data)} bytes, size says {action['size']}")
                    files[path] = (data, False)
            repo.branches[revision].append(files)
            state.commits += 1
            self._ok({"CommitId": uuid.uuid4().hex})

        def _files(self, repo: MsRepo, query: dict[str, str]) -> None:
            rev = query.get("Revision") or "master"
            files = repo.files(rev)
            if files is None:
                raise _Err(404, f"revision {rev} not found")
            root = (query.get("Root") or "").strip("/")
            recursive = query.get("Recursive", "True").lower() == "true"
            out = []
            for path, (data, lfs) in sorted(files.items()):
                if root and not path.startswith(root + "/"):
                    continue
                rel = path[len(root) + 1:] if root else path
                if not recursive and "/" in rel:
                    continue
                out.append({"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "blob", "Size": len(data),
                            "Sha256": hashlib.sha256(data).hexdigest(), "IsLFS": lfs, "Revision": rev})
            self._ok({"Files": out})

        def _raw(self, repo: MsRepo, query: dict[str, str]) -> None:
            rev = query.get("Revision") or "master"
            files = repo.files(rev)
            if files is None:
                raise _Err(404, f"revision {rev} not found")
            entry = files.get(query.get("FilePath", ""))
            if entry is None:
                raise _Err(404, f"file {query.get('FilePath')} not found")
            data = entry[0]
            rng = byte_range(self.headers.get("Range"), len(data))
            if rng:
                start, end = rng
                return self._send(206, data[start:end + 1], "application/octet-stream",
                                  {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"})
            self._send(200, data, "application/octet-stream", {"Accept-Ranges": "bytes"})

    return Handler


class ModelScopeStandIn(LocalServer):
    """Serve the stand-in on 127.0.0.1; ``endpoint`` is what ``MODELSCOPE_ENDPOINT`` takes."""

    def __init__(self, user: str = "aptops") -> None:
        self.token = "ms-" + uuid.uuid4().hex
        self.user = user
        self.state = MsState(token=self.token, user=user)
        super().__init__(_handler(self.state))
        self.endpoint = self.url

    def files(self, repo_id: str, revision: str = "master", kind: str = "model") -> dict[str, bytes]:
        found = self.state.repos[(kind, repo_id)].files(revision)
        assert found is not None, f"{repo_id} has no revision {revision}"
        return {p: d for p, (d, _) in found.items()}
