"""The ``aptops`` command line.

``aptops stages`` lists the stages; ``aptops data clean`` runs one stage function; ``aptops run NAME
--local`` runs a pipeline on this machine through ``kfp.local``; ``aptops compile`` writes the pipelines
as KFP YAML for a cluster; ``aptops submit`` sends one to a KFP API. The orchestrator (``kfp``) is
imported only by the commands that need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aptops import __version__
from aptops.core.config import load_config, parse_overrides
from aptops.core.errors import AptopsError, ConfigError, MissingDependencyError, PipelineError
from aptops.core.logging import configure_logging
from aptops.stages import STAGES

log = logging.getLogger("aptops.cli")
console = Console(stderr=False)
err = Console(stderr=True)

app = typer.Typer(
    name="aptops",
    help="Take a language model through its whole life: data, training, debugging, compression, GGUF "
    "export, Hub publishing and backup, as Kubeflow pipelines that also run on one machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="The data stage: clean a corpus, describe a dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")
hub_app = typer.Typer(help="The hub stage: models in and out of a Hugging Face Hub (HF_ENDPOINT, HF_TOKEN).",
                      no_args_is_help=True)
app.add_typer(hub_app, name="hub")
train_app = typer.Typer(help="The train stage: causal-LM fine-tuning with the Hugging Face Trainer.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")
export_app = typer.Typer(help="The export stage: GGUF for llama.cpp and Ollama, verified against the source.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")

debug_app = typer.Typer(help="The debug stage: profile a model, diagnose its training, report what is wrong.",
                        no_args_is_help=True)
app.add_typer(debug_app, name="debug")

distill_app = typer.Typer(help="The distill stage: train a smaller student against a teacher, measure the trade-off.",
                          no_args_is_help=True)
app.add_typer(distill_app, name="distill")

prune_app = typer.Typer(help="The prune stage: sparsify or shrink a model, fine-tune it, measure the result.",
                        no_args_is_help=True)
app.add_typer(prune_app, name="prune")

multimodal_app = typer.Typer(help="The multimodal stage: text + image + audio encoders, fusion, joint training.",
                              no_args_is_help=True)
app.add_typer(multimodal_app, name="multimodal")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of settings.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a setting: key=value (repeatable).")]


# the cluster options `compile`, `register` (and the Helm chart's register Job) share
RegistryOpt = Annotated[str | None, typer.Option(help="Registry/namespace of the stage images.")]
TagOpt = Annotated[str | None, typer.Option(help="Tag of the stage images.")]
GpuSelectorOpt = Annotated[list[str] | None, typer.Option(help="GPU pool node label k=v (repeatable).")]
GpuTolerationOpt = Annotated[list[str] | None, typer.Option(help="GPU toleration key=value:Effect (repeatable).")]
CpuSelectorOpt = Annotated[list[str] | None, typer.Option(help="CPU pool node label k=v (repeatable).")]
GpuResourceOpt = Annotated[str | None, typer.Option(help="GPU resource name, e.g. nvidia.com/gpu.")]
SecretsOpt = Annotated[list[str] | None, typer.Option(
    help="provider=SecretName: a Kubernetes Secret whose keys become env vars (aws, oss, hf, modelscope).")]
CachePvcOpt = Annotated[str | None, typer.Option(
    help="A PVC mounted at /cache in every model-loading task (HF_HOME and the aptops cache live there).")]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"aptops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    configure_logging("DEBUG" if verbose else "INFO")


@app.command()
def stages() -> None:
    """List the stages: old adapter name, category, priority, image, node pool and how many old functions it keeps."""
    table = Table(title="aptops stages")
    for col in ("stage", "old adapter", "category", "priority", "image", "pool", "old functions"):
        table.add_column(col)
    for s in STAGES:
        table.add_row(s.name, s.adapter, s.category, str(s.priority), s.image, s.pool, str(len(s.functions)))
    console.print(table)


@data_app.command("clean")
def data_clean(
    source: Annotated[str, typer.Argument(help="A file or folder of JSONL, Parquet, CSV or text files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the cleaned dataset folder is written.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Clean a corpus into a Parquet dataset (strategy basic: encodings, control characters, URLs, e-mails, whitespace)."""
    from aptops.data import CleanConfig, clean_dataset

    cfg = load_config(CleanConfig, config, overrides=set_ or [])
    result = _run_stage("data", "clean", lambda: clean_dataset(source, out, cfg), out)
    _print_metrics(f"cleaned dataset: {out}", result.metrics)


@data_app.command("stats")
def data_stats(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder written by 'aptops data clean'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the report folder is written.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Describe a dataset: length statistics, stats.json and report.html."""
    from aptops.data import StatsConfig, dataset_stats

    cfg = load_config(StatsConfig, config, overrides=set_ or [])
    result = _run_stage("data", "stats", lambda: dataset_stats(dataset, out, cfg), out)
    _print_metrics(f"report: {result.outputs['report']}", result.metrics)


@data_app.command("dedup")
def data_dedup(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder (Parquet shards) written by 'aptops data clean'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the deduplicated dataset folder is written.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Remove exact and near duplicates across all shards (MinHash LSH, verified by exact Jaccard)."""
    from aptops.data import DedupConfig, dedup_dataset

    cfg = load_config(DedupConfig, config, overrides=set_ or [])
    result = _run_stage("data", "dedup", lambda: dedup_dataset(dataset, out, cfg), out)
    _print_metrics(f"deduplicated dataset: {out}", result.metrics)


@data_app.command("quality")
def data_quality(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder (Parquet shards).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the scored (or filtered) dataset is written.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score and flag every row: duplicates, length, language, fluency heuristics, perplexity."""
    from aptops.data.quality import QualityConfig, quality_dataset

    cfg = load_config(QualityConfig, config, overrides=set_ or [])
    result = _run_stage("data", "quality", lambda: quality_dataset(dataset, out, cfg), out)
    _print_metrics(f"quality report: {result.outputs['report']}", result.metrics)


@data_app.command("balance")
def data_balance(
    dataset: Annotated[Path, typer.Argument(help="A labelled dataset folder (Parquet shards).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the balanced dataset is written.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Balance the classes of a labelled dataset (oversample, undersample or hybrid)."""
    from aptops.data.balance import BalanceConfig, balance_dataset_dir

    cfg = load_config(BalanceConfig, config, overrides=set_ or [])
    result = _run_stage("data", "balance", lambda: balance_dataset_dir(dataset, out, cfg), out)
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
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """clean -> dedup -> augment -> balance -> quality, as configured (steps=[...]), with per-step counts."""
    from aptops.data.process import ProcessConfig, process_pipeline

    cfg = load_config(ProcessConfig, config, overrides=set_ or [])
    result = _run_stage("data", "process", lambda: process_pipeline(source, out, cfg), out)
    table = Table(title=f"processed dataset: {out}")
    for col in ("step", "rows in", "rows out", "why"):
        table.add_column(col)
    for step in result.details["steps"]:
        why = ", ".join(f"{k}={v:,.0f}" for k, v in step["why"].items())
        table.add_row(step["step"], f"{step['rows_in']:,.0f}", f"{step['rows_out']:,.0f}", why)
    console.print(table)


@hub_app.command("import")
def hub_import(
    repo: Annotated[str, typer.Argument(help="The Hub model repo, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The model folder to write (replaced when complete).")],
    revision: Annotated[str | None, typer.Option("--revision", "-r", help="A branch, tag or commit.")] = None,
) -> None:
    """Download a model (safetensors, config, tokenizer) into a model artifact; HF_TOKEN for private repos."""
    from aptops.hub import fetch_model

    result = _run_stage("hub", "import", lambda: fetch_model(repo, out, revision=revision), out)
    _print_metrics(f"model {repo}@{result.details['commit']}: {out}", result.metrics)


@hub_app.command("export")
def hub_export(
    model: Annotated[Path, typer.Argument(help="A model folder (safetensors), e.g. the output of 'aptops train run'.")],
    repo: Annotated[str, typer.Argument(help="The Hub repo to publish to, as namespace/name.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    message: Annotated[str | None, typer.Option("--message", "-m", help="The commit message.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Also tag the commit (e.g. v1).")] = None,
    info: Annotated[Path | None, typer.Option("--card", help="YAML of card fields: license, language, datasets ...")] = None,
) -> None:
    """Publish a model with its tokenizer and a model card filled from its lineage; HF_TOKEN must be allowed to write."""
    from aptops.hub import export_to_huggingface

    card = yaml.safe_load(info.read_text(encoding="utf-8")) if info else None
    url = export_to_huggingface(str(model), None, repo, private=private, commit_message=message,
                                revision_tag=tag, model_info=card)
    console.print(f"published {model} as {repo}: commit {url}")


@hub_app.command("card")
def hub_card(
    model: Annotated[Path, typer.Argument(help="A model folder.")],
    repo: Annotated[str, typer.Option("--repo", help="The repo id the card names in its usage example.")],
    info: Annotated[Path | None, typer.Option("--card", help="YAML of card fields: license, language, datasets ...")] = None,
) -> None:
    """Write README.md (a model card from the folder's lineage) into a model folder."""
    from aptops.hub import create_model_card

    card = yaml.safe_load(info.read_text(encoding="utf-8")) if info else None
    create_model_card(model, repo, card)
    console.print(f"model card written: {model / 'README.md'}")


@train_app.command("run")
def train_run(
    model: Annotated[str, typer.Argument(help="A model folder or a Hub model id.")],
    dataset: Annotated[str, typer.Argument(help="An aptops dataset folder, JSONL/Parquet/CSV/text, or a Hub dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The trained model folder (checkpoints inside).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune a causal LM; resumes from <out>/checkpoints after an interruption (--set resume=never to not)."""
    from aptops.train import TrainConfig, train_model

    cfg = load_config(TrainConfig, config, overrides=set_ or [])
    result = _run_stage("train", "train", lambda: train_model(model, dataset, out, cfg), out)
    _print_metrics(f"trained model: {out} (report: {result.outputs.get('report')})", result.metrics)


@debug_app.command("run")
def debug_run(
    model: Annotated[str, typer.Argument(help="A causal LM folder or a Hub model id.")],
    dataset: Annotated[str, typer.Argument(help="An aptops dataset folder, JSONL/Parquet/CSV/text, or a Hub dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The report folder: report.html, report.json, report.pdf.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Profile the model, inspect its activations on the data, run a short diagnostic training, report findings."""
    from aptops.debug.stage import DebugStageConfig, debug_model

    cfg = load_config(DebugStageConfig, config, overrides=set_ or [])
    result = _run_stage("debug", "debug", lambda: debug_model(model, dataset, out, cfg), out)
    table = Table(title=f"findings (report: {result.outputs['html']})")
    for col in ("severity", "problem", "where", "what to do"):
        table.add_column(col)
    for f in result.details["findings"]:
        table.add_row(f["severity"], f["kind"], escape(f["where"] or ""), escape(f["suggestion"]))
    console.print(table)
    _print_metrics("debug", result.metrics)


@debug_app.command("profile")
def debug_profile(
    model: Annotated[str, typer.Argument(help="A causal LM folder or a Hub model id.")],
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 1,
    top: Annotated[int, typer.Option(help="Layers to list, the slowest first.")] = 15,
) -> None:
    """Latency, FLOPs (and the transformer estimate) and parameters of one forward pass, per layer."""
    from aptops.debug import profile_model
    from aptops.lm import load_causal_lm

    lm, _, _ = load_causal_lm(model)
    prof = profile_model(lm, (seq_len,), batch_size, top=top)
    table = Table(title=f"{model}: {prof['latency_s'] * 1e3:.1f} ms per forward pass of {batch_size}x{seq_len} tokens")
    for col in ("layer", "type", "ms", "params", "GFLOPs"):
        table.add_column(col)
    for r in prof["layers"]:
        table.add_row(escape(r["name"]), r["type"], f"{r['latency_s'] * 1e3:.3f}", f"{r['params']:,}", f"{r['flops'] / 1e9:.3f}")
    console.print(table)
    _print_metrics("totals", {k: float(v) for k, v in prof.items() if isinstance(v, int | float)})


@distill_app.command("run")
def distill_run(
    teacher: Annotated[str, typer.Argument(help="The teacher: a causal LM folder or a Hub model id.")],
    dataset: Annotated[str, typer.Argument(help="An aptops dataset folder, JSONL/Parquet/CSV/text, or a Hub dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The student model folder (checkpoints inside).")],
    student: Annotated[str | None, typer.Option(help="A student model (default: every 2nd teacher block).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Distil the teacher into a student (--set "objective.strategies={response: 1.0, feature: 0.5}"
    --set objective.temperature=1 --set training.block_size=128 --set training.training_args.max_steps=50)."""
    from aptops.distill import DistillConfig, distill_model

    cfg = load_config(DistillConfig, config, overrides=set_ or [])
    result = _run_stage("distill", "distill", lambda: distill_model(teacher, dataset, output_dir=out, config=cfg,
                                                                      student=student), out)
    _print_metrics(f"student: {out} (report: {result.outputs.get('report')})", result.metrics)


@distill_app.command("evaluate")
def distill_evaluate(
    original: Annotated[str, typer.Argument(help="The original model folder.")],
    compressed: Annotated[str, typer.Argument(help="The compressed (distilled or pruned) model folder.")],
    dataset: Annotated[str, typer.Argument(help="Held-out text the models were not trained on.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The report folder: report.json, report.html.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Parameters, size, perplexity, top-1 agreement, speed and memory of both models, side by side."""
    from aptops.core.artifacts import StageResult
    from aptops.distill.compression import CompressionConfig, compression_metrics, evaluate_compression

    cfg = load_config(CompressionConfig, config, overrides=set_ or [])
    result: dict[str, Any] = {}

    def run() -> StageResult:
        result.update(evaluate_compression(original, compressed, dataset, out, cfg))
        return StageResult("distill", outputs={"report": str(out / "report.html")}, metrics=compression_metrics(result))

    _run_stage("distill", "evaluate", run, out)
    table = Table(title=f"compression report: {out / 'report.html'}")
    for col in ("", "original", "compressed"):
        table.add_column(col)
    for key in ("params", "size_bytes", "perplexity", "forward_tokens_per_s", "generate_tokens_per_s"):
        if key in result["original"]:
            table.add_row(key, f"{result['original'][key]:,.4g}", f"{result['compressed'][key]:,.4g}")
    table.add_row("top1_agreement", "", f"{result['compressed']['top1_agreement']:.3f}")
    console.print(table)


@prune_app.command("run")
def prune_run(
    model: Annotated[str, typer.Argument(help="A causal LM folder or a Hub model id.")],
    dataset: Annotated[str, typer.Argument(help="Text for calibration and fine-tuning (dataset folder, JSONL ...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The pruned model folder (report.html, prune.json inside).")],
    heldout: Annotated[str | None, typer.Option(help="Held-out text for the before/after perplexity.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Prune (--set method=wanda|magnitude|taylor|neuron|head|lottery --set target_sparsity=0.5), fine-tune
    (--set training.block_size=128 --set training.training_args.max_steps=50), report."""
    from aptops.prune import PruneConfig, prune_model

    cfg = load_config(PruneConfig, config, overrides=set_ or [])
    result = _run_stage("prune", "prune", lambda: prune_model(model, dataset, output_dir=out, config=cfg,
                                                                  eval_dataset=heldout), out)
    _print_metrics(f"pruned model: {out} (report: {out / 'report.html'})",
                   {k: v for k, v in result.metrics.items() if k.startswith("prune_") or k == "global_step"})


@multimodal_app.command("train")
def multimodal_train(
    manifest: Annotated[str, typer.Argument(help="A JSONL / Parquet manifest: text, image, audio, label (start, end).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The model folder (report.html, metrics.json inside).")],
    eval_manifest: Annotated[str | None, typer.Option("--eval", help="An evaluation manifest (else a share is held out).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train (--set text_encoder=FOLDER --set fusion=concat|add|attention --set freeze=[text] --set epochs=10)."""
    from aptops.multimodal import MultimodalConfig, train_multimodal_model

    cfg = load_config(MultimodalConfig, config, overrides=set_ or [])
    result = _run_stage("multimodal", "train",
                        lambda: train_multimodal_model(manifest, out, cfg, eval_data=eval_manifest), out)
    _print_metrics(f"multimodal model: {out} (report: {out / 'report.html'})",
                   {k: v for k, v in result.metrics.items()
                    if k.startswith(("eval_", "chance_")) or k in ("train_loss", "samples_per_second")})


@multimodal_app.command("predict")
def multimodal_predict(
    model: Annotated[Path, typer.Argument(help="A model folder written by `aptops multimodal train`.")],
    text: Annotated[str | None, typer.Option(help="The text input.")] = None,
    image: Annotated[Path | None, typer.Option(help="An image file.")] = None,
    audio: Annotated[Path | None, typer.Option(help="An audio file (WAV, FLAC, OGG ...).")] = None,
) -> None:
    """Predict from any subset of text, image and audio; prints JSON."""
    from aptops.multimodal import MultimodalModel, inference_multimodal

    if text is None and image is None and audio is None:
        raise typer.BadParameter("give at least one of --text, --image, --audio")
    loaded = MultimodalModel.from_pretrained(model)
    result = inference_multimodal(loaded, text_input=text, image_input=image, audio_input=audio)
    result.pop("embedding", None)
    if "probabilities" in result:
        names = loaded.config.id2label
        result["probabilities"] = {names.get(i, str(i)): round(p, 4) for i, p in enumerate(result["probabilities"])}
    print(json.dumps(result, indent=2))


@multimodal_app.command("sample")
def multimodal_sample(
    out: Annotated[Path, typer.Argument(help="Where the sample task (train.jsonl, eval.jsonl, images/, audio/) goes.")],
    classes: Annotated[int, typer.Option(help="Classes (2-8): photo + spoken recording + captions each.")] = 6,
    missing: Annotated[float, typer.Option(help="Share of training rows that lose one modality.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Build the sample task from packaged photos (scikit-image) and recordings (alsa-utils)."""
    from aptops.multimodal.samples import build_sample_task

    folder = build_sample_task(out, classes=classes, missing=missing, seed=seed)
    console.print(f"sample task: {folder / 'train.jsonl'} and {folder / 'eval.jsonl'}")


@export_app.command("gguf")
def export_gguf(
    model: Annotated[Path, typer.Argument(help="A Hugging Face causal LM folder (Llama, Mistral, Qwen2, SmolLM).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The artifact folder: model-<TYPE>.gguf, verify.json.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Convert to GGUF, quantize with llama.cpp (--set quantization=Q4_K_M), verify, apply the quant gate."""
    from aptops.export import ExportConfig, export_to_gguf

    cfg = load_config(ExportConfig, config, overrides=set_ or [])
    result = _run_stage("export", "gguf", lambda: export_to_gguf(model, out, config=cfg), out)
    _print_metrics(f"GGUF: {result.outputs['gguf']} (types: {result.details['tensor_types']})", result.metrics)


@export_app.command("ollama")
def export_ollama(
    gguf: Annotated[Path, typer.Argument(help="A GGUF file, e.g. runs/gguf/model-Q8_0.gguf.")],
    name: Annotated[str, typer.Option("--name", "-n", help="The Ollama model name, e.g. smollm2:135m.")],
    tokenizer: Annotated[Path | None, typer.Option(help="The source model folder (its chat template).")] = None,
    system: Annotated[str | None, typer.Option(help="A SYSTEM prompt.")] = None,
    host: Annotated[str | None, typer.Option(help="Ollama's URL (default OLLAMA_HOST or 127.0.0.1:11434).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Smoke-test prompts (repeatable).")] = None,
) -> None:
    """Write a Modelfile from the chat template, register the GGUF in Ollama, and smoke-test it."""
    from aptops.export import create_modelfile, register_to_ollama
    from aptops.export import test_model as smoke

    modelfile = create_modelfile(name, gguf, system_prompt=system, tokenizer_path=tokenizer)
    info = register_to_ollama(modelfile, name, host=host)
    report = smoke(name, prompt or ["Say hello in one sentence."], host=host)
    table = Table(title=f"{name} in Ollama {info['version']} at {info['host']} (Modelfile: {modelfile})")
    for col in ("prompt", "answer", "tokens/s", "stopped", "ok"):
        table.add_column(col)
    for r in report["results"]:
        table.add_row(escape(r["prompt"]), escape(r["answer"][:120]), f"{r['tokens_per_second']:.1f}", str(r["stopped"]),
                      str(not r["empty"] and not r["loops"]))
    console.print(table)
    if not report["passed"]:
        raise typer.Exit(1)


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
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder to restore into (replaced only when verified).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Restore a backup, verifying every file against the manifest; falls back to the next source."""
    from aptops.backup import BackupConfig, restore_model

    cfg = load_config(BackupConfig, config, overrides=set_ or [])
    result = _run_stage("backup", "restore",
                        lambda: restore_model("auto" if source == ["auto"] else source, output_dir=out, config=cfg), out)
    _print_metrics(f"restored {out} from {result.outputs['source']}", result.metrics)


def _run_stage(stage: str, step: str, fn: Any, out: Path) -> Any:
    """Run a stage function with metrics, as a component would: Pushgateway if configured, else a textfile."""
    from aptops.core.runtime import run_component

    run_id = os.environ.get("APTOPS_RUN_ID") or f"cli-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    return run_component(stage, fn, pipeline="cli", run_id=run_id, step=step,
                         metrics_dir=out.parent / f"{out.name}.metrics")


def _cluster_settings(
    image_registry: str | None, image_tag: str | None, gpu_node_selector: list[str] | None,
    gpu_toleration: list[str] | None, cpu_node_selector: list[str] | None, gpu_resource: str | None,
    secret: list[str] | None = None, cache_pvc: str | None = None,
) -> Any:
    from aptops_pipelines.cluster import ClusterSettings, Toleration, parse_selector

    kwargs: dict[str, Any] = {}
    if image_registry is not None:
        kwargs["image_registry"] = image_registry
    if image_tag is not None:
        kwargs["image_tag"] = image_tag
    if gpu_node_selector:
        kwargs["gpu_node_selector"] = parse_selector(gpu_node_selector, field_name="gpu_node_selector")
    if gpu_toleration:
        kwargs["gpu_tolerations"] = tuple(Toleration.parse(t) for t in gpu_toleration)
    if cpu_node_selector:
        kwargs["cpu_node_selector"] = parse_selector(cpu_node_selector, field_name="cpu_node_selector")
    if gpu_resource is not None:
        kwargs["gpu_resource"] = gpu_resource
    if secret:
        kwargs["credential_secrets"] = parse_selector(secret, field_name="secret")
    if cache_pvc:
        kwargs["cache_pvc"] = cache_pvc
    return ClusterSettings(**kwargs)


def _kfp_modules() -> tuple[Any, Any]:
    try:
        import kfp
    except ImportError as exc:
        raise MissingDependencyError("this command needs kfp: pip install 'aptops[kfp]'") from exc
    import aptops_pipelines

    return kfp, aptops_pipelines


@app.command("compile")
def compile_(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the compiled YAML files.")] = Path("dist/pipelines"),
    pipeline: Annotated[list[str] | None, typer.Option("--pipeline", "-p", help="Compile only these (repeatable).")] = None,
    image_registry: RegistryOpt = None,
    image_tag: TagOpt = None,
    gpu_node_selector: GpuSelectorOpt = None,
    gpu_toleration: GpuTolerationOpt = None,
    cpu_node_selector: CpuSelectorOpt = None,
    gpu_resource: GpuResourceOpt = None,
    secret: SecretsOpt = None,
    cache_pvc: CachePvcOpt = None,
) -> None:
    """Compile the pipelines to KFP YAML for a cluster, with images, node pools and secrets from the options."""
    _, pipelines = _kfp_modules()
    settings = _cluster_settings(image_registry, image_tag, gpu_node_selector, gpu_toleration,
                                 cpu_node_selector, gpu_resource, secret, cache_pvc)
    from kfp import compiler

    names = pipeline or sorted(pipelines.PIPELINES)
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title="compiled pipelines")
    table.add_column("pipeline")
    table.add_column("file")
    for name in names:
        func = pipelines.build_pipeline(name, settings)
        path = out / f"{name}.yaml"
        tmp = path.with_name(f".{name}.tmp.yaml")
        compiler.Compiler().compile(func, str(tmp))
        os.replace(tmp, path)
        table.add_row(name, str(path))
    console.print(table)


def _load_params(config: Path | None, params: list[str] | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"config file {str(config)!r} does not exist", value=str(config))
        loaded = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(config)!r} must hold a mapping of parameter: value")
        values.update(loaded.get("params", loaded))
    values.update(parse_overrides(params or []))
    return values


def _coerce_params(func: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Check names against the pipeline's inputs and convert strings to the declared types."""
    inputs = func.component_spec.inputs or {}
    out = {}
    for key, value in values.items():
        if key not in inputs:
            raise ConfigError(
                f"pipeline {func.name!r} has no parameter {key!r}: parameters are {', '.join(sorted(inputs))}",
                field=key, value=value,
            )
        kind = inputs[key].type
        try:
            if kind == "Integer":
                value = int(value)
            elif kind == "Float":
                value = float(value)
            elif kind == "Boolean" and isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                value = value.lower() in {"true", "1", "yes"}
            elif kind == "String":
                value = str(value)
        except ValueError as exc:
            raise ConfigError(f"parameter {key}={value!r} must be of type {kind}", field=key, value=value) from exc
        out[key] = value
    return out


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name (data, ...).")],
    local: Annotated[bool, typer.Option("--local/--no-local", help="Run on this machine with kfp.local.")] = True,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Pipeline parameter k=v (repeatable).")] = None,
    config: ConfigOpt = None,
    runs_dir: Annotated[Path, typer.Option(help="Where local runs write their outputs.")] = Path("runs"),
) -> None:
    """Run a pipeline on this machine through kfp.local (SubprocessRunner in the current environment)."""
    if not local:
        raise ConfigError("only --local runs are done here; use 'aptops submit' to run on a cluster")
    _, pipelines = _kfp_modules()
    from aptops_pipelines.local import run_local

    func = pipelines.build_pipeline(pipeline)
    params = _coerce_params(func, _load_params(config, param))
    run_dir = runs_dir / f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = run_local(func, params, run_dir)
    _print_run_summary(pipeline, run_dir, summary)


@app.command()
def register(
    host: Annotated[str, typer.Option(help="KFP API URL, e.g. http://ml-pipeline.kubeflow:8888.")],
    pipeline: Annotated[list[str] | None, typer.Option("--pipeline", "-p", help="Only these (repeatable).")] = None,
    namespace: Annotated[str | None, typer.Option(help="The KFP namespace (multi-user installs).")] = None,
    image_registry: RegistryOpt = None,
    image_tag: TagOpt = None,
    gpu_node_selector: GpuSelectorOpt = None,
    gpu_toleration: GpuTolerationOpt = None,
    cpu_node_selector: CpuSelectorOpt = None,
    gpu_resource: GpuResourceOpt = None,
    secret: SecretsOpt = None,
    cache_pvc: CachePvcOpt = None,
) -> None:
    """Compile the pipelines for a cluster and upload them to KFP as new versions (unchanged ones are skipped)."""
    _kfp_modules()
    settings = _cluster_settings(image_registry, image_tag, gpu_node_selector, gpu_toleration,
                                 cpu_node_selector, gpu_resource, secret, cache_pvc)
    from aptops_pipelines.register import register_pipelines

    logging.getLogger().addHandler(logging.NullHandler())
    warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
    rows = register_pipelines(host, settings, names=pipeline, token=os.environ.get("KF_PIPELINES_TOKEN") or None,
                              namespace=namespace)
    table = Table(title=f"pipelines registered at {host}")
    for col in ("pipeline", "version", "action"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["pipeline"], row["version"], row["action"])
    console.print(table)


@app.command()
def doctor(
    kfp_host: Annotated[str | None, typer.Option(help="Check this KFP API and the aptops pipelines in it.")] = None,
    pipeline: Annotated[list[str] | None, typer.Option("--pipeline", "-p", help="Pipelines expected (default: all).")] = None,
    namespace: Annotated[str | None, typer.Option(help="Check Secrets and the cache claim in this namespace.")] = None,
    secret: Annotated[list[str] | None, typer.Option(help="A Secret that must exist (repeatable).")] = None,
    pvc: Annotated[str | None, typer.Option(help="The cache PersistentVolumeClaim that must exist.")] = None,
    gpu_node_selector: GpuSelectorOpt = None,
    gpu_resource: Annotated[str, typer.Option(help="GPU resource name.")] = "nvidia.com/gpu",
    in_cluster: Annotated[bool, typer.Option(help="Use the pod's ServiceAccount (inside a cluster).")] = False,
    kubeconfig: Annotated[str | None, typer.Option(help="A kubeconfig file (default: $KUBECONFIG, ~/.kube/config).")] = None,
) -> None:
    """Preflight: the KFP API answers, pipelines are registered, Secrets / PVC exist, the GPU pool has GPUs."""
    from aptops_pipelines.cluster import parse_selector
    from aptops_pipelines.doctor import check_cluster, check_kfp, core_api

    checks = []
    if kfp_host:
        _kfp_modules()
        logging.getLogger().addHandler(logging.NullHandler())
        checks += check_kfp(kfp_host, pipeline, token=os.environ.get("KF_PIPELINES_TOKEN") or None)
    selector = parse_selector(gpu_node_selector, field_name="gpu_node_selector") if gpu_node_selector else None
    if namespace or selector:
        if (secret or pvc) and not namespace:
            raise ConfigError("--secret and --pvc need --namespace", field="namespace")
        try:
            core = core_api(in_cluster=in_cluster, kubeconfig=kubeconfig)
        except Exception as exc:  # kubernetes' config loaders raise several types
            raise ConfigError(f"no Kubernetes credentials: {exc} (pass --kubeconfig, or --in-cluster in a pod)",
                              field="kubeconfig") from None
        checks += check_cluster(core, namespace or "default", secrets=secret or [], pvc=pvc,
                                gpu_node_selector=selector, gpu_resource=gpu_resource)
    if not checks:
        raise ConfigError("nothing to check: give --kfp-host and/or --namespace / --gpu-node-selector", field="doctor")
    table = Table(title="aptops doctor")
    for col in ("check", "result", "detail"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", escape(c.detail))
    console.print(table)
    failed = [c for c in checks if not c.ok]
    if failed:
        err.print(f"[red]{len(failed)} of {len(checks)} checks failed[/]")
        raise typer.Exit(1)


@app.command()
def submit(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    host: Annotated[str, typer.Option(help="KFP API URL, e.g. http://ml-pipeline-ui.kubeflow:80.")],
    experiment: Annotated[str, typer.Option(help="Experiment to run in.")] = "aptops",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Pipeline parameter k=v.")] = None,
    config: ConfigOpt = None,
    image_registry: RegistryOpt = None,
    image_tag: TagOpt = None,
) -> None:
    """Submit a pipeline run to a KFP API (token from KF_PIPELINES_TOKEN if set)."""
    kfp, pipelines = _kfp_modules()
    settings = _cluster_settings(image_registry, image_tag, None, None, None, None)
    func = pipelines.build_pipeline(pipeline, settings)
    params = _coerce_params(func, _load_params(config, param))
    token = os.environ.get("KF_PIPELINES_TOKEN") or None
    # kfp's client logs retries with full tracebacks on the root logger; the failure is reported below.
    logging.getLogger().addHandler(logging.NullHandler())
    warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
    try:
        client = kfp.Client(host=host, existing_token=token)
        run_result = client.create_run_from_pipeline_func(
            func, arguments=params, experiment_name=experiment, run_name=f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    except Exception as exc:  # the KFP client raises many unrelated types
        raise PipelineError(f"submitting {pipeline!r} to {host} failed: {type(exc).__name__}: {exc}") from exc
    console.print(f"submitted run {run_result.run_id} of {pipeline} to {host}")


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:,.4g}" if abs(v) < 1e6 and not float(v).is_integer() else f"{v:,.0f}")
    console.print(table)


def _print_run_summary(pipeline: str, run_dir: Path, summary: list[dict[str, Any]]) -> None:
    console.print(f"[bold]run {pipeline}[/] finished; outputs under {run_dir}")
    artifacts = Table(title=f"artifacts (under {run_dir})")
    artifacts.add_column("task")
    artifacts.add_column("output")
    artifacts.add_column("path", overflow="fold")
    numbers = Table(title="summary")
    numbers.add_column("task")
    numbers.add_column("metric")
    numbers.add_column("value", justify="right")
    for task in summary:
        for name, path in task["artifacts"].items():
            shown = Path(path)
            with contextlib.suppress(ValueError):
                shown = shown.relative_to(run_dir.resolve())
            artifacts.add_row(task["task"], name, str(shown))
        for k, v in task["metrics"].items():
            numbers.add_row(task["task"], k, f"{v:,.4g}" if not float(v).is_integer() else f"{v:,.0f}")
    console.print(artifacts)
    console.print(numbers)


def main() -> None:
    """Entry point: turn aptops errors into one clear line and a non-zero exit."""
    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(2)
    except AptopsError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)


if __name__ == "__main__":
    main()

