"""The old Data Processors plugin's API (``data_processors``), kept for its users.

``process_pipeline(raw_data, output_dir, config)`` is a thin wrapper with the old signature over the stage
contract in :mod:`aptops.data.process`; new code calls :func:`aptops.data.process_pipeline` (``source, *,
output_dir, config``). ``clean_text``, ``augment_text``, ``balance_dataset`` and ``check_quality`` kept their
old signatures and are the same objects as the stage's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from aptops.core.artifacts import StageResult
from aptops.data.augment import augment_text
from aptops.data.balance import balance_dataset
from aptops.data.clean import clean_text
from aptops.data.process import ProcessConfig
from aptops.data.process import process_pipeline as _process_pipeline
from aptops.data.quality import check_quality

__all__ = ["augment_text", "balance_dataset", "check_quality", "clean_text", "process_pipeline"]


def process_pipeline(raw_data: str | Path, output_dir: str | Path | None = None,
                     config: ProcessConfig | None = None) -> StageResult:
    """The old ``process_pipeline(raw_data, output_dir, config)``; without ``output_dir`` the dataset goes to a
    new temporary folder (the result's ``outputs["dataset"]`` names it), never the working folder."""
    out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="aptops-data-")) / "dataset"
    return _process_pipeline(raw_data, output_dir=out, config=config)
