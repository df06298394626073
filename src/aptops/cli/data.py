"""``aptops data ...``: the data stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from aptops.cli.common import In, app, metrics_table, print_table, stage_command

data_app = typer.Typer(help="The data stage: clean a corpus, describe a dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SOURCE = In("source", "A file or folder of JSONL, Parquet, CSV or text files, or a URI of one, a prefix or a glob "
                      "(s3://bucket/corpus/, oss://, gs://, hf://datasets/org/name/data/*.parquet, https://).")

AT_URI = ", or its URI (s3://bucket/runs/clean; oss://, gs://)."


def _show_balance(result: Any, out: Path) -> None:
    before, after = result.details["before"], result.details["after"]
    print_table(f"balanced dataset: {out}", ("class", "before", "after"),
                [(label, str(before[label]), str(after.get(label, 0))) for label in sorted(before)])


def _show_steps(result: Any, out: Path) -> None:
    print_table(f"processed dataset: {out}", ("step", "rows in", "rows out", "why"),
                [(s["step"], f"{s['rows_in']:,.0f}", f"{s['rows_out']:,.0f}",
                  ", ".join(f"{k}={v:,.0f}" for k, v in s["why"].items())) for s in result.details["steps"]])


# name, function, config, input, --out help, how the result shows, help
COMMANDS = (
    ("clean", "clean_dataset", "CleanConfig", SOURCE, "Where the cleaned dataset folder is written.",
     metrics_table("cleaned dataset: {out}"),
     "Clean a corpus into a Parquet dataset (strategy basic: encodings, control characters, URLs, e-mails, "
     "whitespace)."),
    ("stats", "dataset_stats", "StatsConfig",
     In("dataset", "A dataset folder written by 'aptops data clean'" + AT_URI, Path, artifact=True),
     "Where the report folder is written.", metrics_table("report: {report}"),
     "Describe a dataset: length statistics, stats.json and report.html."),
    ("dedup", "dedup_dataset", "DedupConfig",
     In("dataset", "A dataset folder (Parquet shards) written by 'aptops data clean'" + AT_URI, Path,
        artifact=True),
     "Where the deduplicated dataset folder is written.", metrics_table("deduplicated dataset: {out}"),
     "Remove exact and near duplicates across all shards (MinHash LSH, verified by exact Jaccard)."),
    ("quality", "score_quality", "QualityConfig",
     In("dataset", "A dataset folder (Parquet shards)" + AT_URI, Path, artifact=True),
     "Where the scored (or filtered) dataset is written.", metrics_table("quality report: {report}"),
     "Score and flag every row: duplicates, length, language, fluency heuristics, perplexity."),
    ("balance", "balance_classes", "BalanceConfig",
     In("dataset", "A labelled dataset folder (Parquet shards)" + AT_URI, Path, artifact=True),
     "Where the balanced dataset is written.", _show_balance,
     "Balance the classes of a labelled dataset (oversample, undersample or hybrid)."),
    ("process", "process_pipeline", "ProcessConfig", SOURCE, "Where the processed dataset is written.", _show_steps,
     "clean -> dedup -> augment -> balance -> quality, as configured (steps=[...]), with per-step counts."),
)

for _name, _fn, _config, _input, _out, _show, _doc in COMMANDS:
    stage_command(data_app, _name, stage="data", run=f"aptops.data:{_fn}", config=f"aptops.data:{_config}",
                  inputs=[_input], out=_out, show=_show, doc=_doc)
