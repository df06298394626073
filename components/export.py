"""Components of the export stage (image ``aptops-export``: llama.cpp's quantizer beside aptops; CPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp.dsl import Artifact, Input, Metrics, Model, Output

from aptops_components import stage_component

component = stage_component("export")


@stage_component("export", pipeline="deploy", config="aptops.export:ExportConfig", tuned=(
    "quantization", "on_fallback", "min_top1_agreement", "max_perplexity_change", "vocab_type", "fallback_type",
    "base_model"))
def export_gguf(
    model: Input[Model],
    gguf: Output[Model],
    metrics: Output[Metrics],
    **tuned,
):
    """Convert to GGUF, quantize with llama.cpp, read the types back, verify against the model, gate.

    ``quantization`` may name several types, comma-separated (``Q8_0,Q4_K_M``): each is written and verified
    side by side in the one output folder; the first is the artifact's main file. A LoRA adapter artifact
    (training with ``merge_lora: false``) is merged into its base first: the one its ``adapter_config.json``
    names, or ``base_model`` (a Hub id, or a path the export pod can read)."""
    params = dict(locals())
    from aptops.core.runtime import config_from_params, list_param, run_step
    from aptops.export import ExportConfig, export_to_gguf

    first, *also = list_param(params["quantization"]) or [""]  # several types: the first is the main file
    config = config_from_params(ExportConfig, {**params, "quantization": first, "also": ",".join(also)})
    result = run_step("export", "gguf", lambda: export_to_gguf(model.path, output_dir=gguf.path, config=config), params)
    gguf.metadata.update({"quantization": config.quantization, "types": ",".join(config.types),
                          "file": result.outputs["gguf"].rsplit("/", 1)[-1]})


@component
def ollama_smoke_test(
    gguf: Input[Model],
    source: Input[Model],
    served: Output[Artifact],
    metrics: Output[Metrics],
    model_name: str = "aptops-model",
    system_prompt: str = "",
    prompts: str = "Say hello in one sentence.|Name three colours.",
    first_prompt: str = "",
    max_tokens: int = 64,
    ollama_host: str = "",
    pipeline: str = "deploy",
    run_id: str = "",
):
    """Write a Modelfile; register in Ollama and smoke-test there, or (no host) smoke-test with llama.cpp.

    first_prompt goes before prompts (the lifecycle asks what the model was trained to answer first)."""
    params = dict(locals())
    import json
    import os
    import shutil

    from aptops.core.artifacts import StageResult
    from aptops.core.errors import InvalidArtifactError
    from aptops.core.runtime import run_step
    from aptops.export import create_modelfile, register_to_ollama
    from aptops.export import test_model as smoke

    def work():
        os.makedirs(served.path, exist_ok=True)
        # several types side by side: the smallest is the one a user would run on a laptop
        name = min((f for f in os.listdir(gguf.path) if f.endswith(".gguf")),
                   key=lambda f: os.path.getsize(os.path.join(gguf.path, f)))
        target = os.path.join(served.path, name)
        try:
            os.link(os.path.join(gguf.path, name), target)
        except OSError:
            shutil.copy2(os.path.join(gguf.path, name), target)
        modelfile = create_modelfile(model_name, target, system_prompt=system_prompt or None,
                                     tokenizer_path=source.path, parameters={"repeat_penalty": 1.3})
        asked = [p for p in [first_prompt, *prompts.split("|")] if p.strip()]  # first: what it was trained for
        if ollama_host:
            register_to_ollama(modelfile, model_name, host=ollama_host)
            report = smoke(model_name, asked, max_tokens, host=ollama_host)
        else:
            report = smoke(model_name, asked, max_tokens, gguf_path=target, modelfile_path=modelfile)
        with open(os.path.join(served.path, "smoke_test.json"), "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, ensure_ascii=False)
        if not report["passed"]:
            raise InvalidArtifactError("the smoke test failed (an empty or looping answer): see smoke_test.json")
        return StageResult("export", metrics={"tokens_per_second": float(report["tokens_per_second"]),
                                              "prompts": float(len(asked)),
                                              "stopped": float(sum(r["stopped"] for r in report["results"]))})

    run_step("export", "ollama", work, params)
