"""The ``deploy`` pipeline: import → GGUF export (with the quant gate) → Ollama smoke test → optional backup.

Run it on a CPU with the SmolLM2 folder (``make demo`` builds it)::

    aptops run deploy --local --param model=$HOME/.cache/aptops/models/smollm2-135m-instruct
"""

from typing import Any

from kfp import dsl

from aptops.cluster.settings import ClusterSettings
from aptops_components import backup as backup_components
from aptops_components import export as export_components
from aptops_components import hub as hub_components


def build(settings: ClusterSettings) -> Any:
    import_model = settings.component(hub_components.import_model, "hub")
    export_gguf = settings.component(export_components.export_gguf, "export")
    smoke = settings.component(export_components.ollama_smoke_test, "export")
    backup = settings.component(backup_components.backup_artifact, "backup")
    register = settings.component(backup_components.register_model, "backup")

    @dsl.pipeline(name="aptops-deploy", description="Export a model to GGUF, verify it, serve it with Ollama, "
                  "smoke-test it and back the GGUF up.")
    def deploy(
        model: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
        quantization: str = "Q8_0",
        min_top1_agreement: float = 0.6,
        model_name: str = "aptops-model",
        ollama_host: str = "",
        backup_destinations: str = "",
        registry: str = settings.model_registry,
    ):
        """Export a model to GGUF, verify it, serve it with Ollama, smoke-test it and back it up.

        Args:
            model: a Hub model id or a model folder the tasks can read.
            quantization: F16, Q8_0, Q4_0, Q4_K_M, Q5_K_M or Q6_K.
            min_top1_agreement: the quant gate: least next-token agreement with the source model.
            model_name: the Ollama model name.
            ollama_host: Ollama's URL; empty: the smoke test runs the GGUF with llama.cpp in the task.
            backup_destinations: comma-separated locations for the GGUF folder; empty: no backup.
            registry: Kubeflow Model Registry's address (the cluster file's model_registry): the backed-up GGUF
                folder is registered as a version of model_name, named by its content, with its verification
                metrics and lineage; empty: no registration.
        """
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        source = import_model(repo=model, pipeline="deploy", run_id=run_id)
        settings.apply(source, "hub")
        gguf = export_gguf(model=source.outputs["model"], quantization=quantization,
                           min_top1_agreement=min_top1_agreement, pipeline="deploy", run_id=run_id)
        settings.apply(gguf, "export")
        served = smoke(gguf=gguf.outputs["gguf"], source=source.outputs["model"], model_name=model_name,
                       ollama_host=ollama_host, pipeline="deploy", run_id=run_id)
        settings.apply(served, "export", cache=False)
        with dsl.If(backup_destinations != "", name="backup"):
            saved = backup(model=gguf.outputs["gguf"], destinations=backup_destinations,
                           pipeline="deploy", run_id=run_id)
            saved.after(served)
            settings.apply(saved, "backup", cache=False)
            with dsl.If(registry != "", name="registry"):
                entry = register(model=gguf.outputs["gguf"], destinations=backup_destinations, name=model_name,
                                 version="", run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, address=registry,
                                 author=settings.registry_author, pipeline="deploy", run_id=run_id)
                entry.after(saved)
                settings.apply(entry, "backup", cache=False)

    return deploy
