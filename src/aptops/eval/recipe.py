"""The eval stage: a model judged on standard tasks by lm-evaluation-harness, the field's engine.

:func:`evaluate_tasks` runs ``lm_eval.simple_evaluate`` once over every task for one model: a Hugging Face
folder or Hub id (the harness's ``hf`` model: batch size found automatically, on the GPU when there is one) or a
GGUF file (:mod:`aptops.eval.llama_cpp`, llama.cpp in this process). Tasks are named as the harness names them
(``hellaswag``, ``arc_easy``, ``mmlu`` ...) or defined by the user's own task YAML files in ``include_path`` (data
files named in them relative to that folder are found there), so private and offline evaluation work the same way.

The artifact holds ``results.json`` (the harness's ``results`` mapping unchanged, task -> ``"metric,filter"`` ->
value, with the task configs, versions, few-shot counts and sample counts), ``report.html`` (a table and a
chart), and the metrics ``<task>_<metric>`` that KFP and the run report show.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aptops.core.artifacts import StageResult, atomic_output, finish_artifact, write_json
from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, ConfigError

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
# what results.json keeps of the harness's answer besides ``results``
_KEPT = ("groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config",
         "lm_eval_version", "transformers_version", "date")


@dataclass(frozen=True, kw_only=True)
class HarnessConfig:
    """What :func:`evaluate_tasks` asks of lm-evaluation-harness.

    Attributes:
        tasks: harness task (or group) names, ``("arc_easy", "hellaswag")``, or the names of tasks in
            ``include_path``.
        include_path: a folder of task YAML files of one's own (data files named relative to it); empty: none.
        limit: at most this many documents per task (0: all; below 1: that share of them): for quick checks.
        num_fewshot: examples in each prompt (-1: each task's own setting).
        batch_size: ``auto`` or a number (Hugging Face models). On a GPU ``auto`` is the largest batch that fits,
            found by the harness; on a CPU, where memory is not the limit and that search (full-length batches)
            costs more than a whole small evaluation, it is ``cpu_batch_size``.
        max_batch_size: the ceiling of the automatic batch size.
        cpu_batch_size: the batch size ``auto`` means on a CPU.
        device: ``cuda``, ``cpu`` ...; empty: the GPU when there is one.
        dtype: the weights' dtype for Hugging Face models (``auto``: as saved).
        apply_chat_template: render prompts with the model's chat template (instruct models).
        log_samples: also keep every scored document (``samples_<task>.jsonl``).
        seed: the harness's random, numpy, torch and few-shot seeds.
        n_ctx: llama.cpp's context length for GGUF files.
        n_threads: llama.cpp threads (0: its default).
    """

    tasks: tuple[str, ...] = ()
    include_path: str = ""
    limit: float = 0.0
    num_fewshot: int = -1
    batch_size: str = "auto"
    max_batch_size: int = 64
    cpu_batch_size: int = 16
    device: str = ""
    dtype: str = "auto"
    apply_chat_template: bool = False
    log_samples: bool = False
    seed: int = 1234
    n_ctx: int = 2048
    n_threads: int = 0

    def __post_init__(self) -> None:
        check_range("limit", self.limit, min_value=0)
        check_range("num_fewshot", self.num_fewshot, min_value=-1)
        check_range("max_batch_size", self.max_batch_size, min_value=1)
        check_range("cpu_batch_size", self.cpu_batch_size, min_value=1)
        check_range("n_ctx", self.n_ctx, min_value=16)
        check_range("n_threads", self.n_threads, min_value=0)
        if self.batch_size != "auto" and not str(self.batch_size).isdigit():
            raise ConfigError(f"batch_size must be 'auto' or a positive number, not {self.batch_size!r}",
                              field="batch_size", value=self.batch_size)
        check_choice("dtype", self.dtype, ("auto", "float32", "float16", "bfloat16"))
        if any(not str(t).strip() for t in self.tasks):
            raise ConfigError("an empty task name: name tasks as the harness does (arc_easy, hellaswag ...)",
                              field="tasks", value=list(self.tasks))


def is_gguf(model: Any) -> bool:
    return isinstance(model, str | Path) and str(model).endswith(".gguf")


@contextlib.contextmanager
def _in_folder(folder: str) -> Iterator[None]:
    """Data files that task YAML names relative to its folder are found there: the harness hands them to
    ``datasets``, which resolves them against the working directory."""
    if not folder:
        yield
        return
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _check_task_files(folder: Path) -> None:
    """Every task YAML in ``folder`` parses, or the error names the file (the harness only logs and skips it)."""
    require("lm_eval", extra="eval", feature="task evaluation")
    try:  # the harness's own YAML loader (!function tags, includes): 0.4.10 and later ...
        from lm_eval.tasks._yaml_loader import load_yaml

        def load(file: Path) -> Any:
            return load_yaml(file, resolve_func=False)
    except ImportError:  # ... and before
        from lm_eval.utils import load_yaml_config

        def load(file: Path) -> Any:
            return load_yaml_config(str(file), mode="simple")

    for file in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        try:
            data = load(file)
        except Exception as exc:  # yaml errors, unknown !function targets ...
            raise ConfigError(f"task file {str(file)!r} does not parse: {str(exc).splitlines()[0]}; fix it or "
                              "move it out of the tasks folder", field="include_path", value=str(file)) from exc
        if not isinstance(data, dict) or not (data.get("task") or data.get("group") or data.get("tag")):
            raise ConfigError(f"task file {str(file)!r} names no task: a harness task YAML needs `task: <name>` "
                              "(see lm-evaluation-harness docs/task_guide.md)", field="include_path", value=str(file))


def task_manager(config: HarnessConfig) -> Any:
    """The harness's task index with ``config.include_path`` added, every requested task checked to exist.

    Raises:
        ConfigError: no task named, an unknown task (with close names), a task file that does not parse.
        ArtifactNotFoundError: ``include_path`` does not exist.
    """
    tasks_mod = require("lm_eval.tasks", extra="eval", feature="task evaluation")
    if not config.tasks:
        raise ConfigError("no task to evaluate: name harness tasks (--tasks arc_easy,hellaswag) or tasks of your own "
                          "with --include-path DIR", field="tasks")
    include = None
    if config.include_path:
        folder = Path(config.include_path).expanduser()
        if not folder.is_dir():
            raise ArtifactNotFoundError(f"tasks folder {str(folder)!r} does not exist", path=str(folder))
        _check_task_files(folder)
        include = str(folder.resolve())
        # tasks all of one's own need no index of the harness's ~15,000 built-in task files (10 s on 2 cores)
        own = tasks_mod.TaskManager(include_path=include, include_defaults=False)
        if set(config.tasks) <= set(own.all_tasks):
            return own
    manager = tasks_mod.TaskManager(include_path=include)
    known = set(manager.all_tasks)
    for name in config.tasks:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            where = f" or in {config.include_path}" if config.include_path else " (tasks of your own: --include-path DIR)"
            raise ConfigError(f"unknown task {name!r}{hint}: it is not a task of lm-evaluation-harness{where}",
                              field="tasks", value=name)
    return manager


def check_model(model: Any) -> None:
    """Fail now if ``model`` names nothing loadable: a GGUF file's header is read, a folder's configs and
    safetensors headers, a Hub id's form (nothing is downloaded)."""
    if is_gguf(model):
        from aptops.lm.gguf import read_gguf

        read_gguf(model)
    else:
        from aptops.lm.loading import check_model_source

        check_model_source(model)


def harness_model(model: Any, config: HarnessConfig) -> tuple[Any, str]:
    """The harness ``LM`` for ``model`` and what it is (``hf`` / ``gguf``); a folder is checked before loading.

    Raises:
        ArtifactNotFoundError / InvalidArtifactError: the model cannot be found or loaded (the message names it).
    """
    if is_gguf(model):
        from aptops.eval.llama_cpp import llama_cpp_lm

        return llama_cpp_lm(model, n_ctx=config.n_ctx, n_threads=config.n_threads), "gguf"
    huggingface = require("lm_eval.models.huggingface", extra="eval", feature="task evaluation")
    torch = require("torch", extra="eval", feature="task evaluation")
    from aptops.lm.loading import download_model

    folder = download_model(str(model))  # safetensors only, every config checked, or a clear error
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch: int | str = config.batch_size if config.batch_size != "auto" else (
        "auto" if device.startswith("cuda") else config.cpu_batch_size)
    batch = int(batch) if batch != "auto" else batch
    lm = huggingface.HFLM(pretrained=str(folder), device=device, dtype=config.dtype, batch_size=batch,
                          max_batch_size=config.max_batch_size, trust_remote_code=False)
    return lm, "hf"


def task_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The harness's ``results`` as flat numbers named ``<task>_<metric>`` (``arc_easy_acc``; a filter other than
    ``none`` kept, ``gsm8k_exact_match_strict_match``; characters Prometheus does not allow become ``_``), standard
    errors left out."""
    flat = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, comma, filt = key.partition(",")
            if not comma or "_stderr" in metric or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if not math.isfinite(float(value)):
                continue
            name = f"{task}_{metric}" if filt in ("", "none") else f"{task}_{metric}_{filt}"
            flat[re.sub(r"[^a-zA-Z0-9_]", "_", name)] = float(value)
    return flat


def headline(results: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, float, float | None]]:
    """Per task its main number: ``acc_norm`` before ``acc`` before ``exact_match`` before the first metric,
    as ``(metric, value, stderr)``."""
    order = ("acc_norm", "acc", "exact_match", "f1", "word_perplexity")
    out = {}
    for task, values in results.items():
        metrics = {k.partition(",")[0]: (k, v) for k, v in values.items()
                   if "," in k and "_stderr" not in k and isinstance(v, int | float) and not isinstance(v, bool)}
        if not metrics:
            continue
        name = next((m for m in order if m in metrics), next(iter(metrics)))
        key, value = metrics[name]
        stderr = values.get(key.replace(",", "_stderr,", 1))
        out[task] = (name, float(value), float(stderr) if isinstance(stderr, int | float) else None)
    return out


def evaluate_tasks(model: Any, *, output_dir: str | Path, config: HarnessConfig | None = None,
                   stage: str = "eval") -> StageResult:
    """Evaluate one model on ``config.tasks`` with lm-evaluation-harness and write the results artifact.

    Args:
        model: a Hugging Face model folder or Hub id, or a ``.gguf`` file.
        output_dir: the artifact: ``results.json``, ``report.html`` (and ``samples_<task>.jsonl``).
        config: tasks, task folder, limit, few-shot, batch size, device.
        stage: the stage the artifact is named for.

    Returns:
        ``metrics``: ``<task>_<metric>`` (:func:`task_metrics`); ``details``: the ``results.json`` content.

    Raises:
        ConfigError: no, unknown or unparsable task.
        ArtifactNotFoundError / InvalidArtifactError: the model cannot be loaded.
    """
    config = config or HarnessConfig()
    evaluator = require("lm_eval", extra="eval", feature="task evaluation")
    check_model(model)  # cheap checks first: a wrong path or a task typo fails before anything loads
    manager = task_manager(config)
    lm, kind = harness_model(model, config)
    limit = None if not config.limit else (config.limit if config.limit < 1 else int(config.limit))
    log.info("evaluating %s (%s) on %s%s", model, kind, ", ".join(config.tasks),
             f", at most {limit} documents each" if limit else "")
    with _in_folder(str(Path(config.include_path).expanduser().resolve()) if config.include_path else ""):
        answer = evaluator.simple_evaluate(
            model=lm, tasks=list(config.tasks), task_manager=manager, limit=limit,
            num_fewshot=None if config.num_fewshot < 0 else config.num_fewshot,
            apply_chat_template=config.apply_chat_template, log_samples=config.log_samples,
            random_seed=config.seed, numpy_random_seed=config.seed, torch_random_seed=config.seed,
            fewshot_random_seed=config.seed)
    if answer is None:  # only on non-zero ranks of a distributed run
        raise ConfigError("the harness returned no results (is this a secondary process of a distributed run?)")
    results = {"model": str(model), "model_kind": kind, "results": answer["results"],
               **{k: answer[k] for k in _KEPT if k in answer}}
    if kind == "gguf":
        results["llama_cpp"] = {"n_ctx": lm.n_ctx, "reused_prefix_tokens": lm.reused_tokens}
    metrics = task_metrics(answer["results"])
    result = StageResult(stage, outputs={"results": str(Path(output_dir) / RESULTS_FILE),
                                         "report": str(Path(output_dir) / "report.html")},
                         metrics=metrics, details=results)
    with atomic_output(output_dir) as tmp:
        write_json(tmp / RESULTS_FILE, results)
        for task, samples in (answer.get("samples") or {}).items() if config.log_samples else ():
            write_samples(tmp / f"samples_{task}.jsonl", samples)
        (tmp / "report.html").write_text(render_report({str(model): results}), encoding="utf-8")
        finish_artifact(tmp, result, config)
    return result


def write_samples(path: Path, samples: Sequence[Any]) -> None:
    import json

    with path.open("w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, default=str, ensure_ascii=False) + "\n")


def comparison_rows(runs: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """A table of several models' results (``{label: results.json content}``): one row per task and headline
    metric, one column per model, ``value ± stderr``."""
    labels = list(runs)
    heads = {label: headline(run["results"]) for label, run in runs.items()}
    tasks = list(dict.fromkeys(t for h in heads.values() for t in h))
    rows = []
    for task in tasks:
        metric = next(h[task][0] for h in heads.values() if task in h)
        samples = next((run.get("n-samples", {}).get(task, {}).get("effective") for run in runs.values()
                        if run.get("n-samples", {}).get(task)), "")
        cells = []
        for label in labels:
            got = heads[label].get(task)
            cells.append("" if got is None else f"{got[1]:.4f}" + (f" ± {got[2]:.4f}" if got[2] else ""))
        rows.append([task, metric, str(samples), *cells])
    return ["task", "metric", "documents", *labels], rows


def _plot(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """A grouped bar chart of the headline metric per task and model (base64 PNG); empty without matplotlib."""
    try:
        matplotlib = require("matplotlib", extra="debug", feature="the evaluation chart")
    except ImportError:
        return ""
    import base64
    import io

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    heads = {label: headline(run["results"]) for label, run in runs.items()}
    tasks = list(dict.fromkeys(t for h in heads.values() for t in h))
    if not tasks:
        return ""
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) * max(1, len(runs)) ** 0.5), 3.4))
    width = 0.8 / max(1, len(runs))
    for i, (label, head) in enumerate(heads.items()):
        xs = [j + i * width for j, t in enumerate(tasks) if t in head]
        ys = [head[t][1] for t in tasks if t in head]
        errs = [head[t][2] or 0 for t in tasks if t in head]
        ax.bar(xs, ys, width, yerr=errs, label=label, capsize=3)
    ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(tasks))], tasks)
    ax.set_ylabel("score (higher is better)")
    ax.set_title("lm-evaluation-harness")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_report(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """The HTML page of one or more models' results."""
    from aptops.core import report

    header, rows = comparison_rows(runs)
    chart = _plot(runs)
    first = next(iter(runs.values()))
    settings = {"lm-evaluation-harness": first.get("lm_eval_version", "?"),
                "few-shot": ", ".join(f"{t}: {n}" for t, n in (first.get("n-shot") or {}).items()),
                "limit": (first.get("config") or {}).get("limit"),
                "models": ", ".join(f"{label} ({run.get('model_kind')}: {run.get('model')})" for label, run in runs.items())}
    sections = [("Task results", report.table(rows, header=header))]
    if chart:
        sections.append(("Chart", f"<img alt='task results' style='max-width:100%' src='data:image/png;base64,{chart}'>"))
    sections.append(("Settings", report.table(settings)))
    return report.page("aptops eval", sections)
