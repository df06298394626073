"""A loopback TCP proxy that drops chosen HTTP requests, for fault tests against real servers.

It forwards bytes both ways, watches the request lines going to the server, counts them, and when a
rule matches (a substring of the request line, the first ``times`` occurrences) it resets both sockets
in the middle of that request, as a flaky network would.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

_REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")


@dataclass
class DropRule:
    """Drop requests whose line contains ``needle``: let the first ``skip`` through, then drop ``times``."""

    needle: str
    times: int = 1
    skip: int = 0
    dropped: int = 0
    matched: int = 0


@dataclass
class FaultyProxy:
    target_host: str
    target_port: int
    rules: list[DropRule] = field(default_factory=list)
    seen: Counter = field(default_factory=Counter)
    # called with each request line before it is forwarded; returning False drops the request instead
    on_request: Callable[[str], bool | None] | None = None

    def __post_init__(self) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def __enter__(self) -> FaultyProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.close()

    def count(self, needle: str) -> int:
        return sum(n for line, n in self.seen.items() if needle in line)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection((self.target_host, self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool) -> None:
        try:
            while data := src.recv(65536):
                if to_server:
                    for match in _REQUEST_LINE.finditer(data):
                        line = f"{match.group(1).decode()} {match.group(2).decode()}"
                        with self._lock:
                            self.seen[line] += 1
                            rule = None
                            for r in self.rules:
                                if r.needle in line:
                                    r.matched += 1
                                    if r.matched > r.skip and r.dropped < r.times:
                                        rule = r
                                        rule.dropped += 1
                                        break
                        if rule is not None:
                            self._reset(src, dst)
                            return
                        if self.on_request is not None and self.on_request(line) is False:
                            self._reset(src, dst)  # the hook said: this request never reaches the server
                            return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    @staticmethod
    def _reset(*socks: socket.socket) -> None:
        import struct

        for s in socks:
            try:  # RST instead of FIN: the peer sees "connection reset", like a dropped link
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass
