"""A protocol-level stand-in for the Ollama HTTP API (Ollama cannot be installed here).

Endpoints: ``GET /api/version``, ``HEAD``/``POST /api/blobs/sha256:<digest>`` (the upload's sha256 is
recomputed and must equal the digest in the URL), ``POST /api/create`` (``files`` must name uploaded
blobs, the template must be non-empty), ``POST /api/show``, ``POST /api/generate`` — answered for real
by loading the model's GGUF blob with llama.cpp and rendering its template, so a smoke test runs real
inference. ``state.created`` keeps every create request as received.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.services.http import LocalServer


@dataclass
class OllamaState:
    blob_dir: Path
    blobs: set[str] = field(default_factory=set)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    llms: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: OllamaState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            state.refused.append(f"{self.command} {self.path}: {message}")
            self._send(code, {"error": message})

        def _json(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self) -> None:
            if self.path == "/api/version":
                return self._send(200, {"version": "0.12.0-standin"})
            return self._error(404, "not found")

        def do_HEAD(self) -> None:
            if self.path.startswith("/api/blobs/"):
                return self._send(200 if self.path.split("/")[-1] in state.blobs else 404)
            return self._send(404)

        def do_POST(self) -> None:
            if self.path.startswith("/api/blobs/"):
                return self._blob(self.path.split("/")[-1])
            body = self._json()
            if self.path == "/api/create":
                return self._create(body)
            if self.path == "/api/show":
                model = state.models.get(body.get("model", ""))
                if model is None:
                    return self._error(404, f"model '{body.get('model')}' not found")
                return self._send(200, {"template": model["template"], "parameters": model["parameters"],
                                        "details": {"format": "gguf", "family": "llama"}})
            if self.path == "/api/generate":
                return self._generate(body)
            return self._error(404, "not found")

        def _blob(self, digest: str) -> None:
            if not digest.startswith("sha256:"):
                return self._error(400, "digest must be sha256:<hex>")
            n = int(self.headers.get("Content-Length") or 0)
            if n <= 0:
                return self._error(400, "empty blob (or no Content-Length)")
            h = hashlib.sha256()
            path = state.blob_dir / digest.replace(":", "-")
            with path.open("wb") as fh:
                left = n
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    h.update(chunk)
                    fh.write(chunk)
                    left -= len(chunk)
            if f"sha256:{h.hexdigest()}" != digest:
                path.unlink()
                return self._error(400, "digest mismatch")
            state.blobs.add(digest)
            return self._send(201)

        def _create(self, body: dict[str, Any]) -> None:
            state.created.append(body)
            files = body.get("files") or {}
            if not body.get("model") or len(files) != 1:
                return self._error(400, "create needs a model name and exactly one GGUF file")
            (digest,) = files.values()
            if digest not in state.blobs:
                return self._error(400, f"blob {digest} was never uploaded")
            if not (body.get("template") or "").strip():
                return self._error(400, "empty template")
            state.models[body["model"]] = {"blob": digest, "template": body["template"], "system": body.get("system"),
                                           "parameters": body.get("parameters") or {}}
            return self._send(200, {"status": "success"})

        def _generate(self, body: dict[str, Any]) -> None:
            from aptops.export.ollama import render_template

            model = state.models.get(body.get("model", ""))
            if model is None:
                return self._error(404, f"model '{body.get('model')}' not found")
            import llama_cpp

            with state.lock:
                llm = state.llms.get(model["blob"])
                start = time.perf_counter()
                if llm is None:
                    llm = llama_cpp.Llama(model_path=str(state.blob_dir / model["blob"].replace(":", "-")),
                                          n_ctx=2048, verbose=False, seed=0)
                    state.llms[model["blob"]] = llm
                loaded = time.perf_counter()
                options = {**model["parameters"], **(body.get("options") or {})}  # request options win
                prompt = render_template(model["template"], body.get("prompt", ""), model.get("system"))
                out = llm.create_completion(prompt, max_tokens=int(options.get("num_predict", 128)),
                                            temperature=float(options.get("temperature", 0.8)),
                                            top_p=float(options.get("top_p", 0.9)), top_k=int(options.get("top_k", 40)),
                                            repeat_penalty=float(options.get("repeat_penalty", 1.1)),
                                            stop=options.get("stop") or None)
                done = time.perf_counter()
            choice = out["choices"][0]
            return self._send(200, {
                "model": body["model"], "response": choice["text"], "done": True,
                "done_reason": "stop" if choice["finish_reason"] == "stop" else "length",
                "eval_count": out["usage"]["completion_tokens"], "prompt_eval_count": out["usage"]["prompt_tokens"],
                "load_duration": int((loaded - start) * 1e9), "prompt_eval_duration": 0,
                "eval_duration": int((done - loaded) * 1e9), "total_duration": int((done - start) * 1e9),
            })

    return Handler


class OllamaStandIn(LocalServer):
    """Serve the stand-in on 127.0.0.1; ``host`` is what ``OLLAMA_HOST`` takes."""

    def __init__(self, blob_dir: Path) -> None:
        blob_dir.mkdir(parents=True, exist_ok=True)
        self.state = OllamaState(blob_dir=blob_dir)
        super().__init__(_handler(self.state))
        self.host = self.url

    def __exit__(self, *exc: object) -> None:
        for llm in self.state.llms.values():
            llm.close()
        super().__exit__(*exc)
