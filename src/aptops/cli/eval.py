"""``aptops eval ...``: the eval stage's commands (lm-evaluation-harness)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from aptops.cli.common import In, Opt, OverwriteOpt, app, console, print_table, stage_command

eval_app = typer.Typer(help="The eval stage: judge a model on standard or own tasks with lm-evaluation-harness.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _show(result: Any, out: Path) -> None:
    from aptops.eval import comparison_rows

    header, rows = comparison_rows({"value": result.details})
    print_table(f"results: {out / 'results.json'} (report: {out / 'report.html'})", header, rows)


stage_command(
    eval_app, "run", stage="eval", run="aptops.eval:evaluate_tasks", config="aptops.eval:HarnessConfig",
    inputs=[In("model", "A Hugging Face model folder or Hub id, or a .gguf file (run by llama.cpp).")],
    options=[
        Opt("--tasks", "tasks", "Comma-separated harness task names (arc_easy,hellaswag) or names of your own tasks.",
            field="tasks", listed=True, reads=False),
        Opt("--include-path", "include_path", "A folder of task YAML files of your own (data files relative to it).",
            field="include_path"),
        Opt("--limit", "limit", "At most N documents per task (below 1: that share).", type=float, field="limit", reads=False),
        Opt("--num-fewshot", "num_fewshot", "Examples in each prompt (default: each task's own).", type=int,
            field="num_fewshot", reads=False),
        Opt("--batch-size", "batch_size", "auto (default) or a number.", field="batch_size", reads=False),
        Opt("--device", "device", "cuda, cpu ... (default: the GPU when there is one).", field="device", reads=False),
    ],
    out="The results folder: results.json (the harness's results), report.html.", show=_show,
    doc="Evaluate a model (or a GGUF file) on lm-evaluation-harness tasks: aptops eval run MODEL --tasks arc_easy "
        "--limit 100 --out runs/eval. Tasks of your own: --include-path DIR --tasks my_task.")


@eval_app.command("wordnet-task")
def wordnet_task(
    out: Annotated[Path, typer.Argument(help="The tasks folder to write (wordnet_words.yaml and its data).")],
    questions: Annotated[int, typer.Option(help="Definitions to ask (four single-word choices each).")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed of the questions and choices.")] = 0,
    analogies: Annotated[Path | None, typer.Option(
        help="A questions-words.txt (gensim ships one): also write the word_analogies task.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Build a multiple-choice task from WordNet's definitions of common nouns (Debian wordnet-base), and with
    --analogies one of word analogies: evaluate with aptops eval run MODEL --include-path OUT --tasks wordnet_words."""
    from aptops.core.artifacts import output_policy
    from aptops.eval import build_wordnet_task

    with output_policy(overwrite=overwrite):
        result = build_wordnet_task(out, questions=questions, seed=seed, analogies=analogies)
    tasks = result.outputs["task"]
    console.print(f"tasks {tasks}: {int(result.metrics['questions'])} questions each in {out} "
                  f"(chance {result.metrics['chance']:.2f}); aptops eval run MODEL --include-path {out} "
                  f"--tasks {tasks} --out DIR")
