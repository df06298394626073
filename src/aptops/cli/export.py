"""``aptops export ...``: the export stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from aptops.cli.common import In, OverwriteOpt, app, metrics_table, print_table, stage_command

export_app = typer.Typer(help="The export stage: GGUF for llama.cpp and Ollama, verified against the source.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")


stage_command(
    export_app, "gguf", stage="export", run="aptops.export:export_to_gguf", config="aptops.export:ExportConfig",
    inputs=[In("model", "A Hugging Face causal LM folder (Llama, Mistral, Qwen, Gemma, Phi-3, Mixtral ...) or a LoRA "
               "adapter folder (merged into its base; --set base_model=... if it moved).", Path)],
    out="The artifact folder: model-<TYPE>.gguf, verify.json.", show=metrics_table("GGUF: {gguf} (types: {tensor_types})"),
    doc="Convert to GGUF, quantize with llama.cpp (--set quantization=Q4_K_M), verify, apply the quant gate.")


@export_app.command("ollama")
def export_ollama(
    gguf: Annotated[Path, typer.Argument(help="A GGUF file, e.g. runs/gguf/model-Q8_0.gguf.")],
    name: Annotated[str, typer.Option("--name", "-n", help="The Ollama model name, e.g. smollm2:135m.")],
    tokenizer: Annotated[Path | None, typer.Option(help="The source model folder (its chat template).")] = None,
    system: Annotated[str | None, typer.Option(help="A SYSTEM prompt.")] = None,
    host: Annotated[str | None, typer.Option(help="Ollama's URL (default OLLAMA_HOST or 127.0.0.1:11434).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Smoke-test prompts (repeatable).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a Modelfile from the chat template, register the GGUF in Ollama, and smoke-test it."""
    import os

    from aptops.export import create_modelfile, register_to_ollama
    from aptops.export import test_model as smoke
    from aptops.export.ollama import check_modelfile_target

    modelfile = gguf.with_name("Modelfile")
    # written beside it as a hidden draft and put in place only once Ollama took it: a failed registration
    # leaves whatever Modelfile was there as it was
    draft = create_modelfile(name, gguf, system_prompt=system, tokenizer_path=tokenizer,
                             output_path=gguf.with_name(f".Modelfile.draft-{os.getpid()}"))
    try:
        check_modelfile_target(modelfile, draft.read_text(encoding="utf-8"), overwrite=overwrite)
        info = register_to_ollama(draft, name, host=host)
        os.replace(draft, modelfile)
    finally:
        draft.unlink(missing_ok=True)
    report = smoke(name, prompt or ["Say hello in one sentence."], host=host)
    print_table(f"{name} in Ollama {info['version']} at {info['host']} (Modelfile: {modelfile})",
                ("prompt", "answer", "tokens/s", "stopped", "ok"),
                [(escape(r["prompt"]), escape(r["answer"][:120]), f"{r['tokens_per_second']:.1f}", str(r["stopped"]),
                  str(not r["empty"] and not r["loops"])) for r in report["results"]])
    if not report["passed"]:
        raise typer.Exit(1)
