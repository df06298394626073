"""Trainer checkpoints: which one a run resumes from, and never a half-written one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from aptops.core.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # the folder under a stage's output that holds checkpoint-N folders


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


def resume_point(output_dir: str | Path, resume: str) -> str | None:
    """The checkpoint a run in ``output_dir`` continues from.

    Args:
        output_dir: the stage's output folder (checkpoints live in its ``checkpoints/``).
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
    return last_complete_checkpoint(Path(output_dir) / CHECKPOINTS)
