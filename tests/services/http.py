"""What every protocol stand-in under ``tests/services`` shares: a local threaded server and byte ranges."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

S = TypeVar("S", bound="LocalServer")


class LocalServer:
    """Serve a handler class on 127.0.0.1 (a free port) from a daemon thread; ``url`` is its base URL.

    Use it as a context manager: the server answers inside the ``with`` block and is shut down after it.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self: S) -> S:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def json_reply(handler: BaseHTTPRequestHandler, code: int, body: object) -> None:
    """Send ``body`` as a JSON response with ``code``."""
    import json

    data = json.dumps(body).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(start, end)`` of a ``Range: bytes=start-[end]`` header, clamped to ``size``."""
    if not header or not header.startswith("bytes="):
        return None
    start_s, _, end_s = header[6:].partition("-")
    return int(start_s), min(int(end_s) if end_s else size - 1, size - 1)
