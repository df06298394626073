"""``aptops backup`` and ``aptops restore``: the backup stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from aptops.cli.common import (
    ConfigOpt,
    SetOpt,
    _print_metrics,
    _run_stage,
    app,
    console,
)
from aptops.core.config import load_config


@app.command()
def backup(
    model: Annotated[Path, typer.Argument(help="The model folder to back up.")],
    to: Annotated[list[str], typer.Option("--to", "-t", help="A destination location, e.g. s3://bucket/prefix (repeatable).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Back a model folder up to every destination in parallel, verified by a manifest written last."""
    from aptops.backup import BackupConfig, backup_model

    cfg = load_config(BackupConfig, config, overrides=set_ or [])

    def run() -> Any:
        result = backup_model(model, to, cfg)
        table = Table(title=f"backup of {model} ({len(result.manifest['files'])} files, "
                            f"{result.manifest['total_bytes']:,} bytes)")
        for col in ("destination", "outcome", "sent", "skipped", "bytes", "seconds", "retries", "error"):
            table.add_column(col)
        for d in result.destinations:
            table.add_row(d.destination, d.outcome, str(d.files_sent), str(d.files_skipped), f"{d.bytes_sent:,}",
                          f"{d.seconds:.1f}", str(d.retries), escape(d.error or ""))
        console.print(table)
        result.raise_for_failures()  # recorded as a failed stage, after the table shows which destination failed
        return result

    _run_stage("backup", "backup", run, model.with_name(f"{model.name}.backup"))


@app.command()
def restore(
    source: Annotated[list[str], typer.Argument(
        help="Backup locations to try in order (s3://bucket/prefix), or 'auto' to probe --set locations=[...].")],
    out: Annotated[Path, typer.Option("--out", "-o", help="A new or empty folder to restore into (written only when verified).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out even if it holds files.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Restore a backup, verifying every file against the manifest; falls back to the next source."""
    from aptops.backup import BackupConfig, restore_model

    cfg = load_config(BackupConfig, config, overrides=set_ or [])
    result = _run_stage("backup", "restore",
                        lambda: restore_model("auto" if source == ["auto"] else source, output_dir=out, config=cfg,
                                              overwrite=overwrite), out)
    _print_metrics(f"restored {out} from {result.outputs['source']}", result.metrics)
