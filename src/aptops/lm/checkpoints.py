"""Trainer checkpoints: which one a run resumes from, and never a half-written one."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from aptops.core.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # the folder under a stage's output that holds checkpoint-N folders while it runs
# a folder that outlives a pod (the cluster's cache volume): when set, checkpoints live under it, not in the output
CHECKPOINT_ROOT_ENV = "APTOPS_CHECKPOINT_DIR"


def checkpoint_folder(output_dir: str | Path, checkpoint_dir: str = "", *, stage: str = "train") -> Path:
    """Where a run writing ``output_dir`` keeps its resumable ``checkpoint-N`` folders.

    ``checkpoint_dir`` when given; else, when ``$APTOPS_CHECKPOINT_DIR`` is set (the cluster file's checkpoint
    volume), a folder under it named after the stage and the output's absolute path, so a restarted pod of the
    same task finds its checkpoints again and two tasks never share one; else ``<output_dir>/checkpoints``.
    Model artifacts never keep them: the stage removes the folder once the model is written.
    """
    if checkpoint_dir:
        return Path(checkpoint_dir)
    root = os.environ.get(CHECKPOINT_ROOT_ENV, "")
    if root:
        key = hashlib.sha256(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]
        return Path(root) / f"{stage}-{key}"
    return Path(output_dir) / CHECKPOINTS


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step of a ``checkpoint-N`` folder."""
    return int(Path(path).name.rsplit("-", 1)[-1])


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that was written to the end, or ``None``.

    The Trainer writes ``trainer_state.json`` last; a run killed while saving leaves a newer folder without
    it, which transformers' ``get_last_checkpoint`` would pick and then fail to resume from. Such folders are
    removed (the resumed run writes that step again) and the newest whole one is returned.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((checkpoint_step(p), p) for p in folder.iterdir()
                   if p.is_dir() and p.name.startswith("checkpoint-") and p.name.split("-")[1].isdigit())
    while found and not (found[-1][1] / "trainer_state.json").is_file():
        partial = found.pop()[1]
        log.warning("checkpoint %s was not written to the end (no trainer_state.json: the run was stopped while "
                    "saving it); removed, resuming from %s", partial, found[-1][1].name if found else "the start")
        shutil.rmtree(partial, ignore_errors=True)
    return str(found[-1][1]) if found else None


def resume_point(checkpoints: str | Path, resume: str) -> str | None:
    """The checkpoint a run continues from.

    Args:
        checkpoints: the run's checkpoint folder (:func:`checkpoint_folder`).
        resume: ``auto`` (the newest whole checkpoint, if any), ``never``, or a checkpoint folder.

    Raises:
        ConfigError: ``resume`` names a folder that does not exist.
    """
    if resume == "never":
        return None
    if resume != "auto":
        if not Path(resume).is_dir():
            raise ConfigError(f"resume checkpoint {resume!r} does not exist; give a checkpoint folder, 'auto' or "
                              "'never'", field="resume", value=resume)
        return resume
    return last_complete_checkpoint(checkpoints)
