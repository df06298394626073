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
    label: str = "",
    **tuned,
):
    """Evaluate a model on lm-evaluation-harness tasks: results.json (the harness's results), an HTML report, and
    <task>_<metric> metrics. A folder of GGUF files (the export artifact) has each file evaluated.

    label names the model in the run report (base, trained, compressed ...). Tasks are harness names, or tasks of
    one's own in include_path (a folder of task YAML files the task can read)."""
    params = dict(locals())
    import json
    import os
    import shutil
    import tempfile

    from aptops.core.artifacts import StageResult
    from aptops.core.runtime import config_from_params, run_step
    from aptops.eval import HarnessConfig, comparison_rows, evaluate_tasks, render_report

    config = config_from_params(HarnessConfig, params)
    ggufs = sorted(f for f in os.listdir(model.path) if f.endswith(".gguf")) if os.path.isdir(model.path) else []
    if ggufs and os.path.isfile(os.path.join(model.path, "config.json")):
        ggufs = []  # a Hugging Face folder that also carries a GGUF: the folder is the model
    targets = {f.removesuffix(".gguf").rsplit("-", 1)[-1]: os.path.join(model.path, f) for f in ggufs} or {
        label or "model": model.path}
    os.makedirs(results.path, exist_ok=True)
    runs = {}

    def work():
        merged = {}
        with tempfile.TemporaryDirectory(prefix="aptops-eval-") as scratch:
            for name, target in targets.items():
                done = evaluate_tasks(target, output_dir=os.path.join(scratch, name), config=config)
                runs[name] = {**done.details, "label": name, "role": label, "metrics": done.metrics}
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
