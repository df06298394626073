"""``aptops data ...``: the data stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aptops.cli.common import (
    ConfigOpt,
    OverwriteOpt,
    SetOpt,
    _print_metrics,
    _run_stage,
    app,
    console,
)
from aptops.core.config import load_config

data_app = typer.Typer(help="The data stage: clean a corpus, describe a dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("clean")
def data_clean(
    source: Annotated[str, typer.Argument(help="A file or folder of JSONL, Parquet, CSV or text files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the cleaned dataset folder is written.")],
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Clean a corpus into a Parquet dataset (strategy basic: encodings, control characters, URLs, e-mails, whitespace)."""
    from aptops.data import CleanConfig, clean_dataset

    cfg = load_config(CleanConfig, config, overrides=set_ or [])
    result = _run_stage("data", "clean", lambda: clean_dataset(source, output_dir=out, config=cfg), out, inputs=[source], overwrite=overwrite)
    _print_metrics(f"cleaned dataset: {out}", result.metrics)


@data_app.command("stats")
def data_stats(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder written by 'aptops data clean'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the report folder is written.")],
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Describe a dataset: length statistics, stats.json and report.html."""
    from aptops.data import StatsConfig, dataset_stats

    cfg = load_config(StatsConfig, config, overrides=set_ or [])
    result = _run_stage("data", "stats", lambda: dataset_stats(dataset, output_dir=out, config=cfg), out, inputs=[dataset], overwrite=overwrite)
    _print_metrics(f"report: {result.outputs['report']}", result.metrics)


@data_app.command("dedup")
def data_dedup(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder (Parquet shards) written by 'aptops data clean'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the deduplicated dataset folder is written.")],
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Remove exact and near duplicates across all shards (MinHash LSH, verified by exact Jaccard)."""
    from aptops.data import DedupConfig, dedup_dataset

    cfg = load_config(DedupConfig, config, overrides=set_ or [])
    result = _run_stage("data", "dedup", lambda: dedup_dataset(dataset, output_dir=out, config=cfg), out, inputs=[dataset], overwrite=overwrite)
    _print_metrics(f"deduplicated dataset: {out}", result.metrics)


@data_app.command("quality")
def data_quality(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder (Parquet shards).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the scored (or filtered) dataset is written.")],
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score and flag every row: duplicates, length, language, fluency heuristics, perplexity."""
    from aptops.data.quality import QualityConfig, quality_dataset

    cfg = load_config(QualityConfig, config, overrides=set_ or [])
    result = _run_stage("data", "quality", lambda: quality_dataset(dataset, output_dir=out, config=cfg), out, inputs=[dataset], overwrite=overwrite)
    _print_metrics(f"quality report: {result.outputs['report']}", result.metrics)


@data_app.command("balance")
def data_balance(
    dataset: Annotated[Path, typer.Argument(help="A labelled dataset folder (Parquet shards).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the balanced dataset is written.")],
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Balance the classes of a labelled dataset (oversample, undersample or hybrid)."""
    from aptops.data.balance import BalanceConfig, balance_dataset_dir

    cfg = load_config(BalanceConfig, config, overrides=set_ or [])
    result = _run_stage("data", "balance", lambda: balance_dataset_dir(dataset, output_dir=out, config=cfg), out, inputs=[dataset], overwrite=overwrite)
    table = Table(title=f"balanced dataset: {out}")
    for col in ("class", "before", "after"):
        table.add_column(col)
    for label in sorted(result.details["before"]):
        table.add_row(label, str(result.details["before"][label]), str(result.details["after"].get(label, 0)))
    console.print(table)


@data_app.command("process")
def data_process(
    source: Annotated[str, typer.Argument(help="A file or folder of JSONL, Parquet, CSV or text files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the processed dataset is written.")],
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """clean -> dedup -> augment -> balance -> quality, as configured (steps=[...]), with per-step counts."""
    from aptops.data.process import ProcessConfig, process_pipeline

    cfg = load_config(ProcessConfig, config, overrides=set_ or [])
    result = _run_stage("data", "process", lambda: process_pipeline(source, output_dir=out, config=cfg), out, inputs=[source], overwrite=overwrite)
    table = Table(title=f"processed dataset: {out}")
    for col in ("step", "rows in", "rows out", "why"):
        table.add_column(col)
    for step in result.details["steps"]:
        why = ", ".join(f"{k}={v:,.0f}" for k, v in step["why"].items())
        table.add_row(step["step"], f"{step['rows_in']:,.0f}", f"{step['rows_out']:,.0f}", why)
    console.print(table)
