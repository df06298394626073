"""The ``lifecycle`` pipeline: the whole life of a model in one run.

data (clean → near-duplicate removal → quality) → import the base model → train with the debugger →
distil a smaller student → prune it with fine-tuning → evaluate the compression against the trained model →
GGUF export with the quant gate → smoke test (Ollama, or llama.cpp in the task) → optional Hub publish →
optional backup; an exit handler records the run's outcome as a metric however it ends.

Run it on a CPU with SmolLM2-135M (``make demo`` does)::

    aptops run lifecycle --local --param model=$HOME/.cache/aptops/models/smollm2-135m-instruct
"""

from typing import Any

from kfp import dsl

from aptops.cluster.settings import ClusterSettings
from aptops_components import backup as backup_components
from aptops_components import data as data_components
from aptops_components import distill as distill_components
from aptops_components import export as export_components
from aptops_components import hub as hub_components
from aptops_components import prune as prune_components
from aptops_components import runs as run_components
from aptops_components import train as train_components

# fortunes are separated by "%" lines; flagged rows (exact duplicates, too short, junk) are dropped. One line
# of flow YAML: kfp copies defaults into a comment header of the compiled file, where a newline breaks the YAML.
DATA_STEPS = ("{steps: [clean, dedup, quality], clean: {separator: '%'}, "
              "quality: {action: filter, checks: [exact_duplicates, length, heuristics]}}")


def build(settings: ClusterSettings) -> Any:
    process = settings.component(data_components.process_data, "data")
    import_model = settings.component(hub_components.import_model, "hub")
    train_model = settings.component(train_components.train_model, "train")
    distill = settings.component(distill_components.distill_model, "distill")
    prune = settings.component(prune_components.prune_model, "prune")
    evaluate = settings.component(distill_components.evaluate_compression, "distill")
    export_gguf = settings.component(export_components.export_gguf, "export")
    smoke = settings.component(export_components.ollama_smoke_test, "export")
    publish = settings.component(hub_components.export_model, "hub")
    backup = settings.component(backup_components.backup_artifact, "backup")
    outcome = settings.component(run_components.record_run_outcome, "data")

    @dsl.pipeline(name="aptops-lifecycle", description="Clean and check a corpus, fine-tune a causal LM with the "
                  "debugger, distil and prune it, measure the compression, export it to GGUF behind a quant gate, "
                  "smoke-test it, and optionally publish and back it up.")
    def lifecycle(
        model: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
        source: str = "/usr/share/games/fortunes/fortunes",
        data_steps: str = DATA_STEPS,
        chat_prompt: str = "Tell me a fortune.",
        block_size: int = 128,
        eval_fraction: float = 0.1,
        batch_size: int = 4,
        learning_rate: float = 1e-4,
        train_steps: int = 20,
        distill_steps: int = 20,
        student_layer_stride: int = 2,
        student_layers: int = 0,
        prune_method: str = "neuron",
        target_sparsity: float = 0.25,
        prune_steps: int = 10,
        quantization: str = "Q8_0",
        fallback_type: str = "",
        min_top1_agreement: float = 0.6,
        model_name: str = "aptops-model",
        ollama_host: str = "",
        hub_repo: str = "",
        backup_destinations: str = "",
        training_args: str = "{}",
    ):
        """The whole lifecycle of a causal LM.

        Args:
            model: the base model: a Hub model id or a model folder the tasks can read.
            source: the corpus (JSONL, Parquet, CSV or text).
            data_steps: the data stage's ProcessConfig fields as YAML (steps, separator, quality settings).
            chat_prompt: train a chat model with each document as its answer to this user message (keeps
                an instruct model answering); empty: plain text (base models, tokenizers without a template).
            block_size: tokens per training sequence.
            eval_fraction: the share of documents held out to evaluate training, distillation and compression.
            batch_size: sequences per device per step.
            learning_rate: the peak learning rate of training, distillation and recovery.
            train_steps: optimizer steps of fine-tuning.
            distill_steps: optimizer steps of distillation.
            student_layer_stride: the student keeps every k-th block of the trained model.
            student_layers: ... or this many blocks, evenly spread (0: the stride decides).
            prune_method: magnitude, taylor, wanda, neuron, head or lottery.
            target_sparsity: share of weights (unstructured) or units (neuron, head) removed.
            prune_steps: optimizer steps of fine-tuning after pruning.
            quantization: F16, Q8_0, Q4_0, Q4_K_M, Q5_K_M or Q6_K; several side by side, comma-separated
                (``Q8_0,Q4_K_M``): each verified, the smallest smoke-tested.
            fallback_type: the least precision for weights whose rows are too narrow for a k-quant (Q5_0,
                Q8_0 ...); empty: llama.cpp's choice.
            min_top1_agreement: the quant gate: least next-token agreement of the GGUF with its source.
            model_name: the Ollama model name.
            ollama_host: Ollama's URL; empty: the smoke test runs the GGUF with llama.cpp in the task.
            hub_repo: publish the compressed model to this Hub repo; empty: no publish.
            backup_destinations: comma-separated locations for the GGUF folder; empty: no backup.
            training_args: JSON of further transformers.TrainingArguments fields for every training.
        """
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        finished = outcome(pipeline="lifecycle", run_id=run_id)
        settings.apply(finished, "data", cache=False)
        with dsl.ExitHandler(finished, name="lifecycle"):
            data = process(source=source, overrides=data_steps, pipeline="lifecycle", run_id=run_id)
            settings.apply(data, "data")
            base = import_model(repo=model, pipeline="lifecycle", run_id=run_id)
            settings.apply(base, "hub")
            trained = train_model(model=base.outputs["model"], dataset=data.outputs["dataset"], block_size=block_size,
                                  learning_rate=learning_rate, max_steps=train_steps, batch_size=batch_size, chat_prompt=chat_prompt,
                                  eval_fraction=eval_fraction, training_args=training_args, debug=True, pipeline="lifecycle", run_id=run_id)
            settings.apply(trained, "train", trains=True)
            student = distill(teacher=trained.outputs["trained"], dataset=data.outputs["dataset"],
                              student_layer_stride=student_layer_stride, student_layers=student_layers,
                              block_size=block_size,
                              learning_rate=learning_rate, max_steps=distill_steps, batch_size=batch_size, chat_prompt=chat_prompt,
                              eval_fraction=eval_fraction, training_args=training_args, pipeline="lifecycle", run_id=run_id)
            settings.apply(student, "distill", trains=True)
            pruned = prune(model=student.outputs["student"], dataset=data.outputs["dataset"], method=prune_method,
                           target_sparsity=target_sparsity, block_size=block_size, learning_rate=learning_rate,
                           max_steps=prune_steps, batch_size=batch_size, chat_prompt=chat_prompt, training_args=training_args,
                           pipeline="lifecycle", run_id=run_id)
            settings.apply(pruned, "prune", trains=True)
            evaluated = evaluate(original=trained.outputs["trained"], compressed=pruned.outputs["pruned"],
                                 dataset=trained.outputs["heldout"], block_size=block_size, pipeline="lifecycle",
                                 run_id=run_id)
            settings.apply(evaluated, "distill")
            gguf = export_gguf(model=pruned.outputs["pruned"], quantization=quantization, fallback_type=fallback_type,
                               min_top1_agreement=min_top1_agreement, pipeline="lifecycle", run_id=run_id)
            settings.apply(gguf, "export")
            served = smoke(gguf=gguf.outputs["gguf"], source=pruned.outputs["pruned"], model_name=model_name,
                           first_prompt=chat_prompt,
                           ollama_host=ollama_host, pipeline="lifecycle", run_id=run_id)
            settings.apply(served, "export", cache=False)
            with dsl.If(hub_repo != "", name="publish"):
                published = publish(model=pruned.outputs["pruned"], repo=hub_repo, pipeline="lifecycle",
                                    run_id=run_id)
                published.after(served, evaluated)
                settings.apply(published, "hub", cache=False)
            with dsl.If(backup_destinations != "", name="backup"):
                saved = backup(model=gguf.outputs["gguf"], destinations=backup_destinations, pipeline="lifecycle",
                               run_id=run_id)
                saved.after(served)
                settings.apply(saved, "backup", cache=False)

    return lifecycle
