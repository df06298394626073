"""Loading a GGUF file into llama.cpp (llama-cpp-python) so that a refusal says llama.cpp's own reason.

With ``verbose=False`` llama-cpp-python silences llama.cpp's output while it loads, so a model it refuses ends in
``ValueError: Failed to load model from file`` and nothing else: the reason (``attn_q.weight has wrong shape;
expected 64, 64, got 64, 32``, an unknown architecture, a missing tensor) is gone. :func:`open_llama` collects
llama.cpp's error and warning lines during the load through its log callback and puts them in the error.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import InvalidArtifactError

_LOCK = threading.Lock()  # the log callback is process-wide: one load collects at a time


@contextlib.contextmanager
def llama_log(lines: list[str], *, keep: int = 400) -> Iterator[None]:
    """Within the block, llama.cpp's log lines go to ``lines`` (the last ``keep``; the level numbers differ between
    llama.cpp versions, so every level is kept and :func:`reason` picks); llama-cpp-python's own logger is put back
    after."""
    llama_cpp = require("llama_cpp", extra="export", feature="loading a GGUF")
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: Any) -> None:
        lines.append(text.decode("utf-8", "replace"))
        del lines[:-keep]

    with _LOCK:
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        try:
            yield
        finally:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


_WHY = re.compile(r"error|fail|wrong|unknown|missing|invalid|expected|not supported|unsupported", re.IGNORECASE)


def reason(lines: list[str]) -> str:
    """What llama.cpp said about a failure: its error lines, else its last lines, on one line."""
    picked = [line.strip() for line in lines if _WHY.search(line)] or [line.strip() for line in lines[-3:]]
    return " | ".join(dict.fromkeys(x for x in picked if x))[-800:]


def open_llama(path: str | Path, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(model_path=path, verbose=False, **kwargs)``; a file llama.cpp refuses is an
    :class:`InvalidArtifactError` carrying llama.cpp's own reason."""
    llama_cpp = require("llama_cpp", extra="export", feature="loading a GGUF")
    lines: list[str] = []
    try:
        with llama_log(lines):
            return llama_cpp.Llama(model_path=str(path), **{"verbose": False, **kwargs})
    except (ValueError, RuntimeError) as exc:
        said = reason(lines)
        raise InvalidArtifactError(f"llama.cpp cannot load {str(path)!r} ({exc})" + (f"; llama.cpp says: {said}"
                                   if said else ""), path=str(path)) from exc
