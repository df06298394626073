"""``process_pipeline``: clean -> dedup -> augment -> balance -> quality, as configured, in one call.

Each step writes its own dataset artifact under the output folder (``01-clean`` ...), so a run can be
inspected or resumed step by step; ``stats.json`` counts the rows each step removed or added and why,
and ``process.log`` keeps the log of the run.

Try it on a CPU: ``aptops data process INPUT --out runs/process --config process.yaml``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.artifacts import (
    StageResult,
    atomic_output,
    finish_artifact,
    is_complete,
    output_policy,
    read_json,
    write_json,
)
from aptops.core.config import check_choice
from aptops.core.deps import require
from aptops.data.augment import AugmentConfig
from aptops.data.balance import BalanceConfig
from aptops.data.dedup import DedupConfig
from aptops.data.quality import QualityConfig
from aptops.data.recipe import CleanConfig

log = logging.getLogger(__name__)

STEPS = ("clean", "dedup", "augment", "balance", "quality")


@dataclass(frozen=True, kw_only=True)
class AugmentStepConfig:
    """Augment every row ``num_augmented`` times (labels copied); off unless listed in ``steps``."""

    methods: tuple[str, ...] = ("eda",)
    num_augmented: int = 1
    options: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    """Which steps run, in the fixed order clean, dedup, augment, balance, quality, and how."""

    steps: tuple[str, ...] = ("clean", "dedup", "quality")
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    augment: AugmentStepConfig = field(default_factory=AugmentStepConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    resume: bool = True

    def __post_init__(self) -> None:
        for step in self.steps:
            check_choice("steps", step, STEPS)


def process_pipeline(source: str | Path, *, output_dir: str | Path, config: ProcessConfig | None = None) -> StageResult:
    """Run the configured steps on ``source`` (a file or folder the clean step can read) into ``output_dir``.

    Each step's artifact is kept beside it in ``.<output_dir name>.steps/`` (with ``process.log``); with
    ``resume``, a step whose artifact is already complete (``result.json``) is not run again.

    Returns:
        A :class:`StageResult` with, per step, rows in and out (``<step>_rows_in`` ...).
    """
    from aptops.data.augment import augment_text
    from aptops.data.balance import balance_classes
    from aptops.data.io import dataset_rows, read_dataset
    from aptops.data.quality import score_quality
    from aptops.data.recipe import clean_dataset, dedup_dataset

    config = config or ProcessConfig()
    output_dir = Path(output_dir)
    work = output_dir.parent / f".{output_dir.name}.steps"
    work.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(work / "process.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("aptops")
    previous_level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)  # the run's own log file records INFO whatever the console shows
    root.addHandler(handler)
    steps: list[dict[str, Any]] = []
    try:
        current: Path | None = None
        rows_out = 0.0
        ordered = [s for s in STEPS if s in config.steps]
        if not ordered or ordered[0] != "clean":
            ordered = ["clean", *ordered]  # raw input is always read through the cleaner (it parses formats)
        for n, step in enumerate(ordered, start=1):
            target = work / f"{n:02d}-{step}"
            # the steps' folders are this stage's own scratch: a step recomputed replaces its earlier output
            with output_policy(overwrite=True):
                if config.resume and is_complete(target):
                    log.info("step %s: complete from an earlier run, reused", step)
                    result = StageResult("data", metrics=read_json(target / "result.json")["metrics"])
                elif step == "clean":
                    result = clean_dataset(source, output_dir=target, config=config.clean)
                elif step == "dedup":
                    result = dedup_dataset(current, output_dir=target, config=config.dedup)
                elif step == "quality":
                    result = score_quality(current, output_dir=target, config=config.quality)
                elif step == "balance":
                    result = balance_classes(current, output_dir=target, config=config.balance)
                else:
                    table = _augment_table(read_dataset(current), config.augment, config.clean.text_column, augment_text)
                    result = _write_table(table, target)
            rows_in = rows_out if current is not None else result.metrics.get("rows_in", 0.0)
            rows_out = float(dataset_rows(target))
            steps.append({"step": step, "rows_in": rows_in, "rows_out": rows_out, "removed": max(0.0, rows_in - rows_out),
                          "added": max(0.0, rows_out - rows_in), "why": _why(step, result.metrics)})
            log.info("step %s: %d rows in, %d out", step, rows_in, rows_out)
            current = target
        with atomic_output(output_dir) as tmp:
            for shard in sorted(Path(current).glob("part-*.parquet")):
                (tmp / shard.name).write_bytes(shard.read_bytes())
            metrics = {f"{s['step']}_{k}": s[k] for s in steps for k in ("rows_in", "rows_out")}
            metrics["rows_out"] = steps[-1]["rows_out"]
            write_json(tmp / "stats.json", {"stage": "data", "step": "process", "source": str(source),
                                            "steps": steps, "intermediate": str(work)})
            handler.flush()
            (tmp / "process.log").write_text((work / "process.log").read_text(encoding="utf-8"), encoding="utf-8")
            result = StageResult("data", outputs={"dataset": str(output_dir), "steps": str(work)}, metrics=metrics,
                                 details={"steps": steps})
            finish_artifact(tmp, result, config)
        return result
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


def _why(step: str, metrics: dict[str, float]) -> dict[str, float]:
    keys = {
        "clean": ("rows_dropped", "urls_removed", "emails_removed", "control_chars_removed", "terminal_escapes_removed"),
        "dedup": ("duplicates_removed", "verified_pairs", "candidate_pairs"),
        "quality": tuple(k for k in metrics if k.startswith("flag_")),
    }.get(step, ())
    return {k: metrics[k] for k in keys if k in metrics}


def _augment_table(table: Any, cfg: AugmentStepConfig, text_column: str, augment_text: Any) -> Any:
    from dataclasses import replace

    pa = require("pyarrow", extra="data", feature="process_pipeline")
    rows = table.to_pylist()
    new_rows = []
    for i, row in enumerate(rows):
        variants = augment_text(row[text_column] or "", cfg.methods, cfg.num_augmented,
                                config=replace(cfg.options, seed=cfg.options.seed + i))
        for v in variants:
            new_rows.append({**row, text_column: v, "augmented": True})
    for row in rows:
        row["augmented"] = False
    return pa.Table.from_pylist(rows + new_rows)


def _write_table(table: Any, target: Path) -> StageResult:
    pq = require("pyarrow.parquet", extra="data", feature="process_pipeline")
    with atomic_output(target) as tmp:
        pq.write_table(table, tmp / "part-00000.parquet", compression="zstd")
        result = StageResult("data", outputs={"dataset": str(target)}, metrics={"rows": float(table.num_rows)})
        finish_artifact(tmp, result)
    return result
