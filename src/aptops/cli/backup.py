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


registry_app = typer.Typer(help="Kubeflow Model Registry: register a backed-up model version with its metrics, "
                                "evaluation and provenance.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("add")
def registry_add(
    uri: Annotated[str, typer.Argument(help="Where the model's backup is (s3://bucket/prefix, oss://, hf://, modelscope://).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="The local artifact folder that was backed up there "
                                        "(its files are checked against the backup; its metrics and lineage are registered).")],
    name: Annotated[str, typer.Option("--name", "-n", help="The registered model (made when new).")],
    address: Annotated[str, typer.Option("--address", envvar="MODEL_REGISTRY_ADDRESS",
                                         help="The registry, http(s)://host[:port]; token from MODEL_REGISTRY_TOKEN.")],
    version: Annotated[str, typer.Option("--version", "-v", help="The version name; default: the format and the "
                                         "content digest, so the same model always lands on the same version.")] = "",
    evaluation: Annotated[Path | None, typer.Option(help="An eval stage's results.json of this model.")] = None,
    run_id: Annotated[str, typer.Option(help="The pipeline run that made the model (provenance).")] = "",
    run_name: Annotated[str, typer.Option(help="Its name (default: the run id).")] = "",
    description: Annotated[str, typer.Option(help="The version's description.")] = "",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Register a backed-up model as a version in Kubeflow Model Registry (the same content twice adds nothing).

    Not 'aptops register', which uploads pipelines to KFP."""
    from aptops.backup.registry import Provenance, RegistryConfig, register_model_version

    cfg = load_config(RegistryConfig, config, overrides=[f"address={address}", *(set_ or [])])
    provenance = Provenance.from_environment(run_id, run_name) if run_id else None

    def run() -> Any:
        result = register_model_version(model, uri, name=name, version=version, config=cfg, evaluation=evaluation,
                                        provenance=provenance, description=description)
        reg = result.details["registration"]
        said = "registered" if reg["created"] else "already registered (nothing added)"
        console.print(f"{escape(reg['name'])} {escape(reg['version'])}: {said} -> {escape(reg['uri'])} "
                      f"({reg['model_format_name']} {reg['model_format_version']}, {len(reg['metadata'])} metadata "
                      f"fields; version id {reg['ids'].get('model_version')})", highlight=False, soft_wrap=True)
        return result

    _run_stage("backup", "registry", run, model.with_name(f"{model.name}.registry"))
