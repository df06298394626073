"""Artifact folders that are either complete or absent.

A stage writes into a hidden temporary folder beside the destination and renames it into place only
after ``config.json`` and, last, ``result.json`` are written. ``result.json`` is the completeness
marker: a folder without it is a crashed write and is never read as an artifact.

An output never destroys what aptops did not make: :func:`check_output` accepts a new path, an empty folder,
or (with ``--overwrite``) an aptops artifact of the same kind, and refuses anything else, any input of the
run, and a second process writing the same place.

Try it: ``python -c "from aptops.core.artifacts import atomic_output; ..."`` (see tests/unit/core).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from aptops.core.errors import ArtifactNotFoundError, ConfigError, InvalidArtifactError, OutputExistsError

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
LINEAGE_FILE = "aptops.json"
# written when a stage starts writing a folder in place (training: checkpoints live inside), removed by
# finish_artifact: the folder is aptops' own unfinished work, which a rerun of the same stage may resume
IN_PROGRESS_FILE = ".aptops-in-progress.json"


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


def read_json_object(path: str | Path) -> dict[str, Any]:
    """Read a JSON file that must hold an object (a config), with errors that name the file."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise InvalidArtifactError(f"{str(path)!r} holds a JSON {type(data).__name__}, not an object: the file is "
                                   "damaged or not what its name says; save or download it again", path=str(path))
    return data


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


@dataclass(frozen=True)
class OutputPolicy:
    """What an entry point allows its outputs to do: replace an existing aptops artifact (``--overwrite``), and
    which input paths must never be written over or into."""

    overwrite: bool = False
    inputs: tuple[str, ...] = ()


# Set by an entry point (the CLI's ``--overwrite``) around one stage call, so every output that stage writes,
# however deep, follows the user's word without an ``overwrite`` argument threaded through each function.
_POLICY: contextvars.ContextVar[OutputPolicy | None] = contextvars.ContextVar("aptops_output_policy", default=None)


@contextlib.contextmanager
def output_policy(*, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[OutputPolicy]:
    """Within the block, outputs may replace aptops artifacts when ``overwrite``, and never touch ``inputs``."""
    policy = OutputPolicy(overwrite=overwrite, inputs=tuple(str(i) for i in inputs))
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def _local_inputs(inputs: Iterable[str]) -> list[Path]:
    out = []
    for item in inputs:
        if not item or "://" in item:
            continue
        path = Path(item)
        if path.exists() or path.is_symlink():
            out.append(path.resolve())
    return out


def check_output(final_dir: str | Path, *, overwrite: bool | None = None, kind: str | None = None,
                 inputs: Iterable[str | Path] | None = None, resume: bool = False) -> Path:
    """Refuse an output location that would destroy what aptops did not make; return it otherwise.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) a complete aptops artifact, of
    ``kind`` when given (the ``stage`` its ``result.json`` names). Refused: a file, a folder holding anything else,
    a folder that is, contains or lies inside one of ``inputs``.

    Args:
        final_dir: the output location.
        overwrite: replace an existing aptops artifact; ``None`` takes the surrounding :func:`output_policy`.
        kind: the stage about to write, to refuse replacing another stage's artifact.
        inputs: paths the run reads; ``None`` takes the surrounding :func:`output_policy`.
        resume: accept, without ``overwrite``, an unfinished folder of ``kind`` (an interrupted training run).

    Returns:
        ``final_dir`` as a ``Path``.

    Raises:
        OutputExistsError: the location may not be written, with what is there and what to do.
    """
    if re.match(r"^(s3|oss|gs|hf|https?|file):/", str(final_dir)):
        raise ConfigError(f"{str(final_dir)!r}: a stage function writes a local folder; to write to object storage "
                          "run it inside aptops.core.remote_artifacts.staged_output(uri), or give the CLI --out URI",
                          field="output_dir", value=str(final_dir))
    policy = _POLICY.get() or OutputPolicy()
    overwrite = policy.overwrite if overwrite is None else overwrite
    final = Path(final_dir)
    where = str(final)
    target = final.resolve()
    for path in _local_inputs(policy.inputs if inputs is None else (str(i) for i in inputs)):
        if path == target or target in path.parents or path in target.parents:
            relation = ("is" if path == target else "contains" if target in path.parents else "lies inside")
            raise OutputExistsError(f"output {where!r} {relation} the input {str(path)!r}: writing it would destroy "
                                    "what the run reads; choose an --out outside every input", path=where)
    if not (final.exists() or final.is_symlink()):
        return final
    if final.is_symlink() or not final.is_dir():
        what = "a symbolic link" if final.is_symlink() else "a file"
        raise OutputExistsError(f"output {where!r} is {what}, not an aptops artifact folder: nothing was written; "
                                "choose a new or empty folder for --out", path=where)
    entries = sorted(p.name for p in final.iterdir())
    if not entries:
        return final
    existing = _stage_named_in(final / RESULT_FILE)
    if existing is None:
        existing = _stage_named_in(final / IN_PROGRESS_FILE)
        if resume and existing is not None and existing == kind:
            return final  # this stage's own unfinished folder: resumed
    refuse_unless_replaceable(where, entries, existing, kind=kind, overwrite=overwrite)
    return final


def refuse_unless_replaceable(where: str, entries: list[str], existing: str | None, *, kind: str | None,
                              overwrite: bool, place: str = "folder", things: str = "files") -> None:
    """The rule for an output that holds ``entries``: refused unless it is a complete aptops artifact (``existing``
    names its stage) of ``kind`` and ``overwrite`` allows replacing it. Shared by folders and object-store prefixes.

    Raises:
        OutputExistsError: what is there and what to do.
    """
    if existing is None:
        shown = ", ".join(repr(e) for e in entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise OutputExistsError(f"output {where!r} holds {things} aptops did not make ({shown}); nothing was written "
                                f"and nothing removed: choose a new or empty {place} for --out", path=where)
    if kind is not None and existing != kind:
        raise OutputExistsError(f"output {where!r} holds an aptops {existing!r} artifact, not a {kind!r} one; "
                                f"--overwrite replaces only the same kind: choose another {place}", path=where)
    if not overwrite:
        raise OutputExistsError(f"output {where!r} already holds an aptops {existing!r} artifact; pass --overwrite "
                                f"(overwrite=True) to replace it once the new one is complete, or choose another {place}",
                                path=where)


def _stage_named_in(marker: Path) -> str | None:
    """The stage a marker (``result.json`` or the unfinished marker) names, ``""`` when it names none, ``None``
    when there is no readable marker."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("stage") or "") if isinstance(data, dict) else None


@contextlib.contextmanager
def writing_in_place(folder: str | Path, *, stage: str, inputs: Iterable[str | Path] | None = None) -> Iterator[Path]:
    """Hold ``folder`` for a stage that writes into it as it goes (training, whose checkpoints live inside).

    The folder must be new, empty, an unfinished folder of the same ``stage`` (resumed), or, with
    ``overwrite``, a complete artifact of that stage; anything else is refused before any work. Within the
    block the folder is locked against a second writer and marked unfinished until :func:`finish_artifact`.

    Raises:
        OutputExistsError: see :func:`check_output`.
    """
    final = Path(folder)
    final.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(final):
        check_output(final, kind=stage, inputs=inputs, resume=True)
        final.mkdir(exist_ok=True)
        write_json(final / IN_PROGRESS_FILE, {"stage": stage, "pid": os.getpid(), "started_at": time.time()})
        with contextlib.suppress(FileNotFoundError):
            (final / RESULT_FILE).unlink()  # an earlier complete run is no longer what this folder holds
        yield final


@contextlib.contextmanager
def output_lock(final: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``final`` (a lock file beside it), failing at once when another process holds it."""
    final = Path(final)
    lock = final.parent / f".{final.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputExistsError(f"output {str(final)!r} is being written by another process now (it holds "
                                    f"{str(lock)!r}); wait for it to finish or choose another --out",
                                    path=str(final)) from None
        try:  # the file we locked may have been removed by its last holder: then lock the new one
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def atomic_output(final_dir: str | Path, *, overwrite: bool | None = None) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``final_dir`` only if the block finishes.

    The temporary folder sits beside ``final_dir`` (same filesystem, so the rename is atomic). On an
    exception it is removed and ``final_dir`` is left as it was. ``final_dir`` is checked by
    :func:`check_output` before and again after the block: only a new path, an empty folder, or with
    ``overwrite`` an aptops artifact of the kind being written is replaced; anything else is left untouched.
    One process at a time writes a given ``final_dir``.

    Args:
        final_dir: where the artifact should end up.
        overwrite: replace an existing aptops artifact at ``final_dir``; ``None`` takes the surrounding
            :func:`output_policy` (off unless an entry point turned it on).

    Yields:
        The temporary folder to write into.

    Raises:
        OutputExistsError: ``final_dir`` may not be written (see :func:`check_output`), or another process is
            writing it.
    """
    final = Path(final_dir)
    check_output(final, overwrite=overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(final):
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            # what is there now (it may have changed while this ran), and is the new artifact of the same kind?
            check_output(final, overwrite=overwrite, kind=_stage_named_in(tmp / RESULT_FILE) or None)
            _swap_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` (already checked replaceable) is moved aside first and
    removed only once the new one is in place."""
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
    with contextlib.suppress(FileNotFoundError):
        (folder / IN_PROGRESS_FILE).unlink()
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
    """Versions of the software that decides a model's numbers (requirements/lock.txt pins them all), and the stage
    image it ran in (``APTOPS_IMAGE``, set by the images) when it ran in one."""
    names = ["aptops", "torch", "transformers", "datasets", "accelerate", "peft", "kfp", "lm_eval", "pyarrow", "gguf",
             "llama_cpp_python"]
    out = {"python": platform.python_version()}
    for name in names:
        v = _version(name)
        if v:
            out[name] = v
    if os.environ.get("APTOPS_IMAGE"):
        out["image"] = os.environ["APTOPS_IMAGE"]
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
