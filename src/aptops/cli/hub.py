"""``aptops hub ...``: the hub stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aptops.cli.common import (
    OverwriteOpt,
    _print_metrics,
    _run_stage,
    app,
    console,
)
from aptops.core.config import read_yaml_mapping

hub_app = typer.Typer(help="The hub stage: models in and out of a Hugging Face Hub (HF_ENDPOINT, HF_TOKEN).",
                      no_args_is_help=True)
app.add_typer(hub_app, name="hub")


@hub_app.command("import")
def hub_import(
    repo: Annotated[str, typer.Argument(help="The Hub model repo, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The model folder to write (replaced when complete).")],
    overwrite: OverwriteOpt = False,
    revision: Annotated[str | None, typer.Option("--revision", "-r", help="A branch, tag or commit.")] = None,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Keep the repo's own modelling code (*.py, auto_map); dropped by default.")] = False,
) -> None:
    """Download a model (safetensors, config, tokenizer) into a model artifact; HF_TOKEN for private repos."""
    from aptops.hub import FetchConfig, fetch_model

    cfg = FetchConfig(revision=revision, trust_remote_code=trust_remote_code)
    result = _run_stage("hub", "import", lambda: fetch_model(repo, output_dir=out, config=cfg), out, inputs=[], overwrite=overwrite)
    _print_metrics(f"model {repo}@{result.details['commit']}: {out}", result.metrics)
    if result.details["remote_code_dropped"]:
        console.print(f"dropped the model's own code ({', '.join(result.details['remote_code_dropped'])}); "
                      "--trust-remote-code keeps it")


@hub_app.command("export")
def hub_export(
    model: Annotated[Path, typer.Argument(help="A model folder (safetensors), e.g. the output of 'aptops train run'.")],
    repo: Annotated[str, typer.Argument(help="The Hub repo to publish to, as namespace/name.")],
    private: Annotated[bool, typer.Option("--private/--public", help="Create the repo private (the default) or public.")] = True,
    message: Annotated[str | None, typer.Option("--message", "-m", help="The commit message.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Also tag the commit (e.g. v1).")] = None,
    info: Annotated[Path | None, typer.Option("--card", help="YAML of card fields: license, language, datasets ...")] = None,
) -> None:
    """Publish a model with its tokenizer and a model card filled from its lineage; HF_TOKEN must be allowed to write."""
    from aptops.hub import PublishConfig, publish_model

    cfg = PublishConfig(private=private, commit_message=message, revision_tag=tag,
                        model_info=read_yaml_mapping(info) if info else {})
    result = _run_stage("hub", "export", lambda: publish_model(model, repo=repo, config=cfg), model)
    console.print(f"published {model} as {repo}: commit {result.outputs['commit']}")


@hub_app.command("card")
def hub_card(
    model: Annotated[Path, typer.Argument(help="A model folder.")],
    repo: Annotated[str, typer.Option("--repo", help="The repo id the card names in its usage example.")],
    info: Annotated[Path | None, typer.Option("--card", help="YAML of card fields: license, language, datasets ...")] = None,
) -> None:
    """Write README.md (a model card from the folder's lineage) into a model folder."""
    from aptops.hub import create_model_card

    card = read_yaml_mapping(info) if info else None
    create_model_card(model, repo, card)
    console.print(f"model card written: {model / 'README.md'}")
