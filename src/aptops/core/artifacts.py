"""Artifact folders that are either complete or absent.

A stage writes into a hidden temporary folder beside the destination and renames it into place only
after ``config.json`` and, last, ``result.json`` are written. ``result.json`` is the completeness
marker: a folder without it is a crashed write and is never read as an artifact.

Try it: ``python -c "from aptops.core.artifacts import atomic_output; ..."`` (see tests/unit/core).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from aptops.core.errors import ArtifactNotFoundError, InvalidArtifactError

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
LINEAGE_FILE = "aptops.json"


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False, sort_keys=True, default=_json_default)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactNotFoundError(f"{str(path)!r} does not exist", path=str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArtifactError(f"{str(path)!r} is not valid JSON: {exc}", path=str(path)) from exc


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


@dataclass
class StageResult:
    """What every stage returns: where its outputs are and the numbers it measured."""

    stage: str
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "outputs": self.outputs, "metrics": self.metrics, "details": self.details}


@contextlib.contextmanager
def atomic_output(final_dir: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``final_dir`` only if the block finishes.

    The temporary folder sits beside ``final_dir`` (same filesystem, so the rename is atomic). On an
    exception it is removed and ``final_dir`` is left as it was. With ``overwrite``, an existing
    ``final_dir`` is replaced; without it, an existing complete artifact raises ``FileExistsError``.

    Args:
        final_dir: where the artifact should end up.
        overwrite: replace an existing folder at ``final_dir``.

    Yields:
        The temporary folder to write into.
    """
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite and is_complete(final):
        raise FileExistsError(f"{str(final)!r} already holds a complete artifact; pass overwrite=True to replace it")
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_into_place(tmp, final)


def _swap_into_place(tmp: Path, final: Path) -> None:
    old = None
    if final.exists() or final.is_symlink():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def finish_artifact(folder: str | Path, result: StageResult, config: Any = None) -> StageResult:
    """Write ``config.json`` then ``result.json`` (the completeness marker) into ``folder``."""
    folder = Path(folder)
    if config is not None:
        write_json(folder / CONFIG_FILE, _config_dict(config))
    payload = result.to_dict() | {"finished_at": time.time(), "aptops_version": _version("aptops")}
    write_json(folder / RESULT_FILE, payload)
    return result


def is_complete(folder: str | Path) -> bool:
    """True when ``folder`` holds a readable ``result.json`` marker."""
    marker = Path(folder) / RESULT_FILE
    try:
        json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def require_complete(folder: str | Path, *, what: str = "artifact") -> Path:
    """Return ``folder`` if it is a complete artifact, else raise a helpful error."""
    folder = Path(folder)
    if not folder.exists():
        raise ArtifactNotFoundError(f"{what} {str(folder)!r} does not exist", path=str(folder))
    if folder.is_file():
        hint = (" (a raw text file: make it a dataset with `aptops data clean FILE --out DIR` first)"
                if what == "dataset" else "")
        raise ArtifactNotFoundError(f"{what} {str(folder)!r} is a file, not an aptops {what} folder{hint}",
                                    path=str(folder))
    if not is_complete(folder):
        raise ArtifactNotFoundError(
            f"{what} {str(folder)!r} has no {RESULT_FILE}: it is incomplete (an interrupted write?); "
            "rerun the stage that produces it",
            path=str(folder),
        )
    return folder


def write_lineage(
    folder: str | Path,
    *,
    stage: str,
    inputs: Mapping[str, str],
    config: Any,
    metrics: Mapping[str, float],
) -> Path:
    """Write ``aptops.json`` into a model folder: which stage made it, from what, how, with what result.

    An existing lineage (from the stage that produced the input model) is kept as ``parents``.
    """
    folder = Path(folder)
    previous: list[Any] = []
    path = folder / LINEAGE_FILE
    if path.is_file():
        with contextlib.suppress(InvalidArtifactError):
            old = read_json(path)
            previous = [*old.get("parents", []), {k: v for k, v in old.items() if k != "parents"}]
    record = {
        "stage": stage,
        "inputs": dict(inputs),
        "config": _config_dict(config),
        "metrics": dict(metrics),
        "versions": package_versions(),
        "created_at": time.time(),
        "parents": previous,
    }
    return write_json(path, record)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a model's numbers."""
    names = ["aptops", "torch", "transformers", "pyarrow", "gguf", "llama_cpp_python"]
    out = {"python": platform.python_version()}
    for name in names:
        v = _version(name)
        if v:
            out[name] = v
    return out


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _config_dict(config: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        from aptops.core.config import to_dict

        return to_dict(config)
    return config
