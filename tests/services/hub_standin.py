"""A protocol-level stand-in for the Hugging Face Hub (no Hub is reachable here).

It speaks the endpoints the real ``huggingface_hub`` client calls for publishing and downloading, with
``HF_HUB_DISABLE_XET=1`` so uploads take the LFS path:

- ``POST /api/repos/create`` (public/private, 409 when the repo exists), ``POST /api/validate-yaml``;
- ``POST /api/{type}s/{repo}/preupload/{rev}`` (regular vs LFS by extension, size and binary sample; the
  remote oid so unchanged files are skipped), the LFS batch API ``{repo}.git/info/lfs/objects/batch``
  with single PUT or multipart upload (``chunk_size`` + part URLs + completion POST) and ``verify``;
- ``POST /api/{type}s/{repo}/commit/{rev}`` (NDJSON: header, file, lfsFile, deletedFile);
- ``GET /api/{type}s/{repo}[/revision/{rev}]``, ``/tree/{rev}``, ``/refs``, ``POST /tag/{rev}``,
  ``POST /paths-info/{rev}``;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` / ``X-Linked-Etag``,
  ``X-Linked-Size`` and byte ranges.

What the client sends is checked, not trusted: every write needs ``Authorization: Bearer <token>`` with a
known token (401 otherwise, and private repos answer 404 to strangers, like the Hub); every LFS object's
sha256 and size are recomputed on arrival and a mismatch is refused; a commit may only reference LFS
objects that were uploaded and verified. ``state.lfs_verified`` lists the oids checked.
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

import yaml

from tests.services.http import LocalServer, byte_range

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".parquet", ".arrow", ".model", ".onnx",
                ".npy", ".h5", ".msgpack", ".zip", ".tar", ".gz", ".zst")
REGULAR_MAX = 10 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        return git_blob_sha1(self._pointer() if self.lfs else self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def _pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()


@dataclass
class Commit:
    oid: str
    files: dict[str, Blob]
    message: str
    parent: str | None
    date: float


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        return self.commits.get(oid) if oid else None


@dataclass
class HubState:
    tokens: dict[str, str]  # token -> user name
    multipart_threshold: int = 8 * 1024 * 1024
    chunk_size: int = 4 * 1024 * 1024
    upload_bytes_per_s: float | None = None  # a slow link: request bodies arrive no faster than this
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)
    parts: dict[tuple[str, int], bytes] = field(default_factory=dict)
    lfs_verified: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _HttpError(Exception):
    def __init__(self, code: int, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.error_code = code, message, error_code


def _handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        # --- plumbing -------------------------------------------------------------------------------
        def _send(self, code: int, body: bytes | Any = b"", headers: dict[str, str] | None = None) -> None:
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            if not n:
                return b""
            if not state.upload_bytes_per_s:
                return self.rfile.read(n)
            chunks, left = [], n
            while left:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
                time.sleep(len(chunk) / state.upload_bytes_per_s)
            return b"".join(chunks)

        def _user(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            if not auth:
                return None
            state.auth_headers.append(auth)
            token = auth.removeprefix("Bearer ").strip()
            if token not in state.tokens:
                raise _HttpError(401, "Invalid credentials in Authorization header", "Unauthorized")
            return state.tokens[token]

        def _need_user(self) -> str:
            user = self._user()
            if user is None:
                raise _HttpError(401, "You must be authenticated to write (no token sent)", "Unauthorized")
            return user

        def _repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
            user = self._need_user() if write else self._user()
            repo = state.repos.get((repo_type, repo_id))
            if repo is None or (repo.private and user is None):
                raise _HttpError(404, f"Repository Not Found for url: {self.path}", "RepoNotFound")
            if write and repo_id.split("/")[0] != user:
                raise _HttpError(403, f"You don't have the rights to write to {repo_id}")
            return repo

        def _commit(self, repo: Repo, rev: str) -> Commit:
            commit = repo.resolve(unquote(rev))
            if commit is None:
                raise _HttpError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
            return commit

        def _dispatch(self) -> None:
            url = urlsplit(self.path)
            path, query = unquote(url.path), dict(parse_qsl(url.query))
            state.requests.append((self.command, path))
            try:
                with state.lock:
                    self._route(path, query)
            except _HttpError as err:
                state.refused.append(f"{self.command} {path}: {err.code}")
                headers = {"X-Error-Message": err.message}
                if err.error_code:
                    headers["X-Error-Code"] = err.error_code
                self._send(err.code, {"error": err.message}, headers)

        do_GET = do_POST = do_PUT = do_HEAD = _dispatch

        # --- routes ---------------------------------------------------------------------------------
        def _route(self, path: str, query: dict[str, str]) -> None:
            parts = path.strip("/").split("/")
            m = self.command
            if path == "/api/repos/create" and m == "POST":
                return self._create(json.loads(self._body()))
            if path == "/api/validate-yaml" and m == "POST":
                return self._validate_yaml(json.loads(self._body()))
            if path == "/api/whoami-v2" and m == "GET":
                return self._send(200, {"type": "user", "name": self._need_user()})
            if parts[0] == "lfs":  # /lfs/{oid}[/part/{n}] and /lfs/{oid}/verify
                return self._lfs(parts[1:])
            if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets"):
                repo_type, repo_id, rest = parts[1][:-1], "/".join(parts[2:4]), parts[4:]
                return self._api(repo_type, repo_id, rest, query)
            repo_type = "model"
            if parts[0] == "datasets":
                repo_type, parts = "dataset", parts[1:]
            if len(parts) >= 3 and parts[1].endswith(".git") and parts[2:5] == ["info", "lfs", "objects"]:
                return self._batch(repo_type, f"{parts[0]}/{parts[1][:-4]}", json.loads(self._body()))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(repo_type, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            raise _HttpError(404, f"no route for {m} {path}")

        def _create(self, body: dict[str, Any]) -> None:
            user = self._need_user()
            namespace = body.get("organization") or user
            if namespace != user:
                raise _HttpError(403, f"You don't have the rights to create a repo under {namespace}")
            repo_type = body.get("type") or "model"
            repo_id = f"{namespace}/{body['name']}"
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            if (repo_type, repo_id) in state.repos:  # the Hub still names the repo's URL on a conflict
                return self._send(409, {"error": "You already created this model repo",
                                        "url": f"{self._base()}/{prefix}{repo_id}"}, {"X-Error-Code": "RepoExists"})
            visibility = body.get("visibility") or ("private" if body.get("private") else "public")
            if visibility not in ("public", "private", "protected"):
                raise _HttpError(400, f"invalid visibility {visibility!r}")
            repo = Repo(repo_id, repo_type, visibility != "public")
            first = Commit(uuid.uuid4().hex + uuid.uuid4().hex[:8], {
                ".gitattributes": Blob(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", False)},
                "initial commit", None, time.time())
            repo.commits[first.oid] = first
            repo.branches["main"] = first.oid
            state.repos[(repo_type, repo_id)] = repo
            self._send(200, {"url": f"{self._base()}/{prefix}{repo_id}", "name": repo_id, "id": uuid.uuid4().hex})

        def _validate_yaml(self, body: dict[str, Any]) -> None:
            content = body.get("content", "")
            if not content.startswith("---\n"):
                return self._send(200, {"warnings": [{"message": "empty or missing yaml metadata"}], "errors": []})
            try:
                meta = yaml.safe_load(content.split("---\n")[1])
            except yaml.YAMLError as exc:
                return self._send(400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []})
            errors = []
            if not isinstance(meta, dict):
                errors.append({"message": "metadata must be a mapping"})
            else:
                for entry in meta.get("model-index") or []:
                    for result in entry.get("results", []):
                        for metric in result.get("metrics", []):
                            if not isinstance(metric.get("value"), int | float):
                                errors.append({"message": f"model-index metric {metric.get('type')} has no number"})
            self._send(400 if errors else 200, {"errors": errors, "warnings": []})

        def _api(self, repo_type: str, repo_id: str, rest: list[str], query: dict[str, str]) -> None:
            m = self.command
            if not rest and m == "GET":
                return self._info(self._repo(repo_type, repo_id), "main")
            action = rest[0] if rest else ""
            if action == "revision" and m == "GET":
                return self._info(self._repo(repo_type, repo_id), "/".join(rest[1:]))
            if action == "preupload" and m == "POST":
                return self._preupload(self._repo(repo_type, repo_id, write=True), rest[1],
                                       json.loads(self._body()))
            if action == "commit" and m == "POST":
                return self._commit_post(self._repo(repo_type, repo_id, write=True), rest[1], self._body())
            if action == "tree" and m == "GET":
                repo = self._repo(repo_type, repo_id)
                return self._tree(repo, rest[1], "/".join(rest[2:]), query.get("recursive") in ("True", "true", "1"))
            if action == "paths-info" and m == "POST":
                repo = self._repo(repo_type, repo_id)
                form = parse_qsl(self._body().decode())
                wanted = [v for k, v in form if k == "paths"]
                return self._paths_info(repo, rest[1], wanted)
            if action == "refs" and m == "GET":
                repo = self._repo(repo_type, repo_id)
                ref = lambda name, oid, kind: {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}  # noqa: E731
                return self._send(200, {"branches": [ref(n, o, "heads") for n, o in repo.branches.items()],
                                        "tags": [ref(n, o, "tags") for n, o in repo.tags.items()],
                                        "converts": []})
            if action == "tag" and m == "POST":
                repo = self._repo(repo_type, repo_id, write=True)
                body = json.loads(self._body())
                commit = self._commit(repo, rest[1])
                if body["tag"] in repo.tags:
                    raise _HttpError(409, f"Tag {body['tag']} already exists")
                repo.tags[body["tag"]] = commit.oid
                return self._send(200, {})
            if action == "commits" and m == "GET":
                repo = self._repo(repo_type, repo_id)
                commit, out = self._commit(repo, rest[1]), []
                while commit is not None:
                    out.append({"id": commit.oid, "title": commit.message, "message": commit.message,
                                "authors": [{"user": repo_id.split("/")[0]}],
                                "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date))})
                    commit = repo.commits.get(commit.parent) if commit.parent else None
                return self._send(200, out)
            raise _HttpError(404, f"no route for {m} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

        def _info(self, repo: Repo, rev: str) -> None:
            commit = self._commit(repo, rev)
            self._send(200, {
                "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid, "private": repo.private,
                "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
                "tags": [], "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            })

        def _entry(self, path: str, blob: Blob) -> dict[str, Any]:
            entry: dict[str, Any] = {"type": "file", "path": path, "size": len(blob.data), "oid": blob.oid}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob._pointer())}
            return entry

        def _tree(self, repo: Repo, rev: str, folder: str, recursive: bool) -> None:
            commit = self._commit(repo, rev)
            prefix = f"{folder.strip('/')}/" if folder else ""
            out: list[dict[str, Any]] = []
            dirs: set[str] = set()
            for path in sorted(commit.files):
                if not path.startswith(prefix):
                    continue
                rel = path[len(prefix):]
                if "/" in rel:
                    parents = rel.split("/")[:-1]
                    for i in range(1, len(parents) + 1 if recursive else 2):
                        dirs.add(prefix + "/".join(parents[:i]))
                    if not recursive:
                        continue
                out.append(self._entry(path, commit.files[path]))
            out += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
                    for d in sorted(dirs)]
            if folder and not out:
                raise _HttpError(404, f"{folder} does not exist", "EntryNotFound")
            self._send(200, out)

        def _paths_info(self, repo: Repo, rev: str, paths: list[str]) -> None:
            commit = self._commit(repo, rev)
            out = []
            for p in paths:
                if p in commit.files:
                    out.append(self._entry(p, commit.files[p]))
                elif any(f.startswith(p.rstrip("/") + "/") for f in commit.files):
                    out.append({"type": "directory", "path": p, "oid": hashlib.sha1(p.encode()).hexdigest(),
                                "size": 0})
            self._send(200, out)

        def _preupload(self, repo: Repo, rev: str, body: dict[str, Any]) -> None:
            commit = repo.resolve(unquote(rev))
            files = []
            for f in body["files"]:
                sample = base64.b64decode(f["sample"])
                lfs = (f["path"].endswith(LFS_SUFFIXES) or f["size"] > REGULAR_MAX or b"\0" in sample)
                existing = commit.files.get(f["path"]) if commit else None
                oid = None
                if existing is not None:
                    oid = existing.sha256 if existing.lfs else existing.oid
                files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                              "shouldIgnore": False, "oid": oid})
            self._send(200, {"files": files, "commitOid": commit.oid if commit else None})

        def _batch(self, repo_type: str, repo_id: str, body: dict[str, Any]) -> None:
            self._repo(repo_type, repo_id, write=True)
            if body.get("operation") != "upload" or body.get("hash_algo", "sha256") != "sha256":
                raise _HttpError(422, "only sha256 uploads are supported")
            base, objects = self._base(), []
            for obj in body["objects"]:
                oid, size = obj["oid"], obj["size"]
                if oid in state.lfs:
                    objects.append({"oid": oid, "size": size})  # already there: no actions, no upload
                    continue
                actions: dict[str, Any] = {"verify": {"href": f"{base}/lfs/{oid}/verify"}}
                if size > state.multipart_threshold and "multipart" in body.get("transfers", []):
                    n = -(-size // state.chunk_size)
                    header = {"chunk_size": str(state.chunk_size)}
                    header.update({str(i): f"{base}/lfs/{oid}/part/{i}?size={size}" for i in range(1, n + 1)})
                    actions["upload"] = {"href": f"{base}/lfs/{oid}?size={size}", "header": header}
                else:
                    actions["upload"] = {"href": f"{base}/lfs/{oid}?size={size}"}
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
            self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

        def _lfs(self, rest: list[str]) -> None:
            oid = rest[0]
            query = dict(parse_qsl(urlsplit(self.path).query))
            if len(rest) == 3 and rest[1] == "part" and self.command == "PUT":
                data = self._body()
                state.parts[(oid, int(rest[2]))] = data
                return self._send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})
            if len(rest) == 2 and rest[1] == "verify" and self.command == "POST":
                self._need_user()
                body = json.loads(self._body())
                data = state.lfs.get(body["oid"])
                if data is None or len(data) != body["size"]:
                    raise _HttpError(404, f"LFS object {body['oid']} not found or wrong size")
                return self._send(200, {})
            if len(rest) == 1 and self.command == "PUT":  # basic transfer: the whole object
                return self._store(oid, self._body(), int(query["size"]))
            if len(rest) == 1 and self.command == "POST":  # multipart completion
                body = json.loads(self._body())
                chunks = []
                for part in body["parts"]:
                    data = state.parts.pop((oid, part["partNumber"]), None)
                    if data is None or part["etag"].strip('"') != hashlib.md5(data).hexdigest():
                        raise _HttpError(400, f"part {part['partNumber']} of {oid} missing or its etag differs")
                    chunks.append(data)
                return self._store(oid, b"".join(chunks), int(query["size"]))
            raise _HttpError(404, "unknown LFS call")

        def _store(self, oid: str, data: bytes, size: int) -> None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != oid or len(data) != size:
                raise _HttpError(400, f"LFS object sha256/size mismatch: announced {oid}/{size}, got {actual}/{len(data)}")
            state.lfs[oid] = data
            state.lfs_verified.append(oid)
            self._send(200, b"")

        def _commit_post(self, repo: Repo, rev: str, body: bytes) -> None:
            if self.headers.get("Content-Type") != "application/x-ndjson":
                raise _HttpError(400, "commit payload must be application/x-ndjson")
            branch = unquote(rev)
            if branch not in repo.branches:
                raise _HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = repo.commits[repo.branches[branch]]
            files = dict(parent.files)
            header: dict[str, Any] = {}
            for line in body.splitlines():
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    files[value["path"]] = Blob(base64.b64decode(value["content"]), False)
                elif key == "lfsFile":
                    data = state.lfs.get(value["oid"])
                    if data is None:
                        raise _HttpError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    files[value["path"]] = Blob(data, True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise _HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: b for p, b in files.items() if not p.startswith(prefix)}
                else:
                    raise _HttpError(400, f"unknown commit operation {key!r}")
            if not header.get("summary"):
                raise _HttpError(400, "commit header with a summary is required")
            if header.get("parentCommit") and header["parentCommit"] != parent.oid:
                raise _HttpError(412, "A commit has happened since the parent commit")
            oid = hashlib.sha1(f"{parent.oid}{time.time_ns()}{uuid.uuid4()}".encode()).hexdigest()
            repo.commits[oid] = Commit(oid, files, header["summary"], parent.oid, time.time())
            repo.branches[branch] = oid
            prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
            self._send(200, {"commitUrl": f"{self._base()}/{prefix}{repo.repo_id}/commit/{oid}",
                             "commitOid": oid, "pullRequestUrl": None, "success": True})

        def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit(repo, rev)
            blob = commit.files.get(path)
            if blob is None:
                raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound")
            data = blob.data
            headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.oid}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            if blob.lfs:
                headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(data))})
            rng = byte_range(self.headers.get("Range"), len(data)) if self.command == "GET" else None
            if rng:
                start, end = rng
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._send(206, data[start:end + 1], headers)
            if self.command == "HEAD":
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                return None
            return self._send(200, data, headers)

        def _base(self) -> str:
            host, port = self.server.server_address[:2]
            return f"http://{host}:{port}"

    return Handler


class HubStandIn(LocalServer):
    """Serve the stand-in on 127.0.0.1; ``endpoint`` is what ``HF_ENDPOINT`` / ``HfApi(endpoint=)`` takes.

    ``tokens`` maps each accepted token to its user name (the namespace it may write to).
    """

    def __init__(self, tokens: dict[str, str] | None = None, **options: Any) -> None:
        self.token = "hf_" + uuid.uuid4().hex
        self.user = "aptops-user"
        self.state = HubState(tokens=tokens or {self.token: self.user}, **options)
        super().__init__(_handler(self.state))
        self.endpoint = self.url

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` as the server holds them (for assertions)."""
        repo = self.state.repos[(repo_type, repo_id)]
        commit = repo.resolve(revision)
        assert commit is not None, f"{repo_id} has no revision {revision}"
        return {p: b.data for p, b in commit.files.items()}

    def lfs_paths(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> set[str]:
        commit = self.state.repos[(repo_type, repo_id)].resolve(revision)
        assert commit is not None
        return {p for p, b in commit.files.items() if b.lfs}


__all__ = ["HubStandIn", "git_blob_sha1"]
