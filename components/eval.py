"""Components of the eval stage (image ``aptops-eval``, GPU pool; a CPU is allowed).

The pipelines run :func:`evaluate_tasks` on Hugging Face model folders in the eval image, and on GGUF folders in
the export image (llama.cpp is there: ``ClusterSettings.component(evaluate_tasks, "export")``).
No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from aptops_components import stage_component


@stage_component("eval", pipeline="lifecycle", config="aptops.eval:HarnessConfig",
                 tuned=("tasks", "include_path", "limit", "num_fewshot", "batch_size", "device",
                        "apply_chat_template"))
def evaluate_tasks(
    model: Input[Model],
    results: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    baseline: Input[Model] = None,
    label: str = "",
    baseline_label: str = "base",
    **tuned,
):
    """Evaluate a model (and its baseline, when given: before and after, in one task) on lm-evaluation-harness
    tasks: results.json (the harness's results per model), an HTML report, and <task>_<metric> metrics (prefixed by
    the model's label when there are several). A folder of GGUF files (the export artifact) has each file evaluated.
    Without tasks it evaluates nothing and says so (pipelines evaluate only when given tasks).

    label and baseline_label name the models in the run report (base, trained, compressed ...). Tasks are harness
    names, or tasks of one's own in include_path (a folder of task YAML files the task can read)."""
    params = dict(locals())
    import json
    import os
    import shutil
    import tempfile

    from aptops.core.artifacts import StageResult
    from aptops.core.runtime import config_from_params, run_step
    from aptops.eval import HarnessConfig, comparison_rows, evaluate_tasks, render_report

    config = config_from_params(HarnessConfig, params)
    os.makedirs(results.path, exist_ok=True)
    if not config.tasks:  # a pipeline run without eval tasks: say so, evaluate nothing
        with open(os.path.join(results.path, "results.json"), "w", encoding="utf-8") as fh:
            json.dump({"label": label, "models": {}, "skipped": "no eval tasks were given"}, fh)
        with open(report.path, "w", encoding="utf-8") as fh:
            fh.write("<!doctype html><title>aptops eval</title><p>No eval tasks were given: nothing was evaluated.</p>")
        return

    def models_in(path, role):
        """``{name: (path, role)}``: a folder of GGUF files (the export artifact) gives each file, named by its
        type; a Hugging Face folder (safetensors) is one model, named by its role."""
        files = os.listdir(path) if os.path.isdir(path) else []
        ggufs = [] if any(f.endswith(".safetensors") for f in files) else sorted(f for f in files if f.endswith(".gguf"))
        return {f.removesuffix(".gguf").rsplit("-", 1)[-1]: (os.path.join(path, f), role) for f in ggufs} or {
            role or "model": (path, role)}

    targets = {**(models_in(baseline.path, baseline_label) if baseline is not None else {}),
               **models_in(model.path, label)}
    runs = {}

    def work():
        merged = {}
        with tempfile.TemporaryDirectory(prefix="aptops-eval-") as scratch:
            for name, (target, role) in targets.items():
                done = evaluate_tasks(target, output_dir=os.path.join(scratch, name), config=config)
                runs[name] = {**done.details, "label": name, "role": role, "metrics": done.metrics}
                shutil.copyfile(done.outputs["results"], os.path.join(results.path, f"results-{name}.json"))
                merged.update({k if len(targets) == 1 else f"{name}_{k}": v for k, v in done.metrics.items()})
        return StageResult("eval", outputs={"results": results.path}, metrics=merged)

    run_step("eval", "evaluate", work, params)
    with open(os.path.join(results.path, "results.json"), "w", encoding="utf-8") as fh:
        json.dump({"label": label, "models": runs}, fh, indent=2, default=str)
    with open(report.path, "w", encoding="utf-8") as fh:
        fh.write(render_report(runs))
    results.metadata.update({"label": label, "models": ",".join(runs),
                             "table": json.dumps(comparison_rows(runs)[1])})
