"""The ``lifecycle`` pipeline: the whole life of a model in one run.

data (clean → near-duplicate removal → quality) → import the base model → train with the debugger →
distil a smaller student → prune it with fine-tuning → evaluate the compression against the trained model →
judge base, trained, compressed and GGUF models on lm-evaluation-harness tasks (when given) → GGUF export with the quant gate → smoke test (Ollama, or llama.cpp in the task) → optional Hub publish →
optional backup; an exit handler records the run's outcome as a metric however it ends.

Run it on a CPU with SmolLM2-135M (``make demo`` does)::

    aptops run lifecycle --local --param model=$HOME/.cache/aptops/models/smollm2-135m-instruct
"""

from types import SimpleNamespace
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
from aptops_pipelines.evaluation import judge

# fortunes are separated by "%" lines; flagged rows (exact duplicates, too short, junk) are dropped. One line
# of flow YAML: kfp copies defaults into a comment header of the compiled file, where a newline breaks the YAML.
DATA_STEPS = ("{steps: [clean, dedup, quality], clean: {separator: '%'}, "
              "quality: {action: filter, checks: [exact_duplicates, length, heuristics]}}")


def build(settings: ClusterSettings) -> Any:
    c = SimpleNamespace(**{name: settings.component(component, stage) for name, (component, stage) in {
        "process": (data_components.process_data, "data"), "import_model": (hub_components.import_model, "hub"),
        "train": (train_components.train_model, "train"), "distill": (distill_components.distill_model, "distill"),
        "prune": (prune_components.prune_model, "prune"),
        "evaluate": (distill_components.evaluate_compression, "distill"),
        "export_gguf": (export_components.export_gguf, "export"),
        "smoke": (export_components.ollama_smoke_test, "export"), "publish": (hub_components.export_model, "hub"),
        "backup": (backup_components.backup_artifact, "backup"),
        "register": (backup_components.register_model, "backup"),
        "outcome": (run_components.record_run_outcome, "data")}.items()})

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
        student_selection: str = "influence",
        replay: str = "",
        replay_ratio: float = 0.5,
        prune_method: str = "neuron",
        target_sparsity: float = 0.25,
        prune_steps: int = 10,
        prune_lora_r: int = 0,
        prune_learning_rate: float = 1e-4,
        quantization: str = "Q8_0",
        fallback_type: str = "",
        min_top1_agreement: float = 0.6,
        model_name: str = "aptops-model",
        ollama_host: str = "",
        hub_repo: str = "",
        backup_destinations: str = "",
        model_destinations: str = "",
        registry: str = settings.model_registry,
        training_args: str = "{}",
        eval_tasks: str = "",
        eval_include_path: str = "",
        eval_limit: float = 0.0,
    ):
        """The whole lifecycle of a causal LM.

        Args:
            model: the base model: a Hub model id or a model folder the tasks can read.
            source: the corpus (JSONL, Parquet, CSV or text): a path the tasks can read, or a URI read in place
                (s3://bucket/corpus/, oss://, gs://, hf://datasets/org/name/data/*.parquet, https://).
            data_steps: the data stage's ProcessConfig fields as YAML (steps, separator, quality settings).
            chat_prompt: train a chat model with each document as its answer to this user message (keeps
                an instruct model answering); empty: plain text (base models, tokenizers without a template).
            block_size: tokens per training sequence.
            eval_fraction: the share of documents held out to evaluate training, distillation and compression.
            batch_size: sequences per device per step.
            learning_rate: the peak learning rate of training and distillation.
            train_steps: optimizer steps of fine-tuning.
            distill_steps: optimizer steps of distillation (0: the student as made from the selected blocks).
            student_layer_stride: the student keeps every k-th block of the trained model.
            student_layers: ... or this many blocks (0: the stride decides), chosen by student_selection.
            student_selection: influence (the blocks that change their input most are kept, measured on the replay
                text when there is one, else on the training text) or spread (evenly spread).
            replay: general text (a file or folder the tasks can read) mixed into the blocks of training,
                distillation and recovery, so the models keep what they knew; empty: the corpus alone.
            replay_ratio: the share of training blocks taken from replay.
            prune_method: magnitude, taylor, wanda, neuron, head or lottery.
            target_sparsity: share of weights (unstructured) or units (neuron, head) removed.
            prune_steps: optimizer steps of fine-tuning after pruning (0: none).
            prune_lora_r: recover through LoRA adapters of this rank, merged after (0: every weight). The kept
                weights stay as they were, which keeps what they know: on the demo's student, 10 steps at rank 8
                (learning rate 2e-4) kept 0.73 / 0.70 of 400 WordNet / analogy questions while the held-out
                perplexity fell from 7.7 to 6.2; 5 distillation + 5 recovery steps on every weight at 1e-4 cost
                7 points of WordNet.
            prune_learning_rate: the peak learning rate of the recovery after pruning.
            quantization: F16, Q8_0, Q4_0, Q4_K_M, Q5_K_M or Q6_K; several side by side, comma-separated
                (``Q8_0,Q4_K_M``): each verified, the smallest smoke-tested.
            fallback_type: the least precision for weights whose rows are too narrow for a k-quant (Q5_0,
                Q8_0 ...); empty: llama.cpp's choice.
            min_top1_agreement: the quant gate: least next-token agreement of the GGUF with its source.
            model_name: the Ollama model name.
            ollama_host: Ollama's URL; empty: the smoke test runs the GGUF with llama.cpp in the task.
            hub_repo: publish the compressed model to this Hub repo; empty: no publish.
            backup_destinations: comma-separated locations for the GGUF folder; empty: no backup.
            model_destinations: comma-separated locations for the compressed model folder; empty: no backup.
            registry: Kubeflow Model Registry's address (the cluster file's model_registry): each backed-up model
                (the compressed one, the GGUF folder) is registered as a version of model_name there, named by its
                content, with its metrics, task results and lineage; empty: no registration.
            training_args: JSON of further transformers.TrainingArguments fields for every training.
            eval_tasks: lm-evaluation-harness tasks that judge the base, trained, compressed and GGUF models
                (comma-separated harness names, or tasks in eval_include_path); empty: none.
            eval_include_path: a folder of task YAML files of your own the tasks can read (aptops eval
                wordnet-task makes one); empty: harness tasks only.
            eval_limit: at most this many documents per eval task (0: all).
        """
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        finished = settings.apply(c.outcome(pipeline="lifecycle", run_id=run_id), "data", cache=False)
        with dsl.ExitHandler(finished, name="lifecycle"):
            labels = {"pipeline": "lifecycle", "run_id": run_id}
            data = settings.apply(c.process(source=source, overrides=data_steps, **labels), "data")
            base = settings.apply(c.import_model(repo=model, **labels), "hub")
            judged = judge(settings, tasks=eval_tasks, include_path=eval_include_path, limit=eval_limit, labels=labels)
            training = {"block_size": block_size, "learning_rate": learning_rate, "batch_size": batch_size,
                        "chat_prompt": chat_prompt, "training_args": training_args, "replay": replay,
                        "replay_ratio": replay_ratio, **labels}
            pruned, evaluated = _train_and_compress(
                c, settings, base.outputs["model"], data.outputs["dataset"], training, judged, eval_fraction=eval_fraction,
                train_steps=train_steps, distill_steps=distill_steps, student_layer_stride=student_layer_stride,
                student_layers=student_layers, student_selection=student_selection, prune_method=prune_method,
                target_sparsity=target_sparsity, prune_steps=prune_steps, prune_lora_r=prune_lora_r,
                prune_learning_rate=prune_learning_rate)
            _ship(c, settings, pruned, evaluated, judged, labels, quantization=quantization, fallback_type=fallback_type,
                  min_top1_agreement=min_top1_agreement, model_name=model_name, first_prompt=chat_prompt,
                  ollama_host=ollama_host, hub_repo=hub_repo, backup_destinations=backup_destinations,
                  model_destinations=model_destinations, registry=registry)

    return lifecycle


def _train_and_compress(c: Any, settings: ClusterSettings, base: Any, dataset: Any, training: dict[str, Any],
                        judged: Any, *, eval_fraction: Any, train_steps: Any, distill_steps: Any, student_layer_stride: Any,
                        student_layers: Any, student_selection: Any, prune_method: Any, target_sparsity: Any,
                        prune_steps: Any, prune_lora_r: Any, prune_learning_rate: Any) -> Any:
    """Fine-tune with the debugger, distil a student, prune it with recovery, and measure the compression against
    the trained model on its held-out split and the eval tasks: the ``(pruned, evaluated)`` tasks, where
    ``evaluated`` is the compressed model's eval task (the model card reads it)."""
    trained = settings.apply(c.train(model=base, dataset=dataset, max_steps=train_steps, eval_fraction=eval_fraction,
                                     debug=True, **training), "train", trains=True)
    student = settings.apply(c.distill(
        teacher=trained.outputs["trained"], dataset=dataset, student_layer_stride=student_layer_stride,
        student_layers=student_layers, student_selection=student_selection, max_steps=distill_steps,
        eval_fraction=eval_fraction, **training),
        "distill", trains=True)
    # every training holds out the same documents (same fraction, same seed), which evaluate-compression scores
    recovery = {**training, "learning_rate": prune_learning_rate, "lora_r": prune_lora_r}
    pruned = settings.apply(c.prune(model=student.outputs["student"], dataset=dataset, method=prune_method,
                                    target_sparsity=target_sparsity, max_steps=prune_steps,
                                    eval_fraction=eval_fraction, **recovery),
                            "prune", trains=True)
    labels = {k: training[k] for k in ("pipeline", "run_id")}
    evaluated = settings.apply(c.evaluate(original=trained.outputs["trained"], compressed=pruned.outputs["pruned"],
                                          dataset=trained.outputs["heldout"], block_size=training["block_size"],
                                          chat_prompt=training["chat_prompt"], **labels), "distill")
    judged(trained.outputs["trained"], "trained", baseline=base)
    compressed = judged(pruned.outputs["pruned"], "compressed")
    compressed.after(evaluated)  # the compression report first: a publish that waits for this waits for both
    return pruned, compressed


def _ship(c: Any, settings: ClusterSettings, pruned: Any, evaluated: Any, judged: Any, labels: dict[str, Any], *,
          quantization: Any, fallback_type: Any, min_top1_agreement: Any, model_name: Any, first_prompt: Any,
          ollama_host: Any, hub_repo: Any, backup_destinations: Any, model_destinations: Any, registry: Any) -> None:
    """GGUF export behind the quant gate, the smoke test, and the optional Hub publish, backups and registration."""
    gguf = settings.apply(c.export_gguf(model=pruned.outputs["pruned"], quantization=quantization,
                                        fallback_type=fallback_type, min_top1_agreement=min_top1_agreement, **labels),
                          "export")
    gguf_judged = judged(gguf.outputs["gguf"], "gguf", gguf=True)
    served = settings.apply(c.smoke(gguf=gguf.outputs["gguf"], source=pruned.outputs["pruned"], model_name=model_name,
                                    first_prompt=first_prompt, ollama_host=ollama_host, **labels), "export", cache=False)
    with dsl.If(hub_repo != "", name="publish"):
        published = c.publish(model=pruned.outputs["pruned"], repo=hub_repo, evaluation=evaluated.outputs["results"],
                              **labels)
        published.after(served, evaluated)
        settings.apply(published, "hub", cache=False)
    for model, results, destinations, what in ((gguf.outputs["gguf"], gguf_judged, backup_destinations, "gguf"),
                                               (pruned.outputs["pruned"], evaluated, model_destinations, "model")):
        with dsl.If(destinations != "", name=f"backup-{what}"):
            saved = c.backup(model=model, destinations=destinations, **labels)
            saved.after(served)
            settings.apply(saved, "backup", cache=False)
            register(c, settings, saved, model, results, destinations=destinations, name=model_name,
                     registry=registry, labels=labels)


def register(c: Any, settings: ClusterSettings, saved: Any, model: Any, results: Any, *, destinations: Any, name: Any,
             registry: Any, labels: dict[str, Any]) -> None:
    """After ``saved`` (the backup of ``model`` to ``destinations``): register it in Model Registry when ``registry``
    is set, with ``results`` (its eval task) as its evaluation and this run as its provenance."""
    with dsl.If(registry != "", name="registry"):
        task = c.register(model=model, evaluation=results.outputs["results"], destinations=destinations, name=name,
                          version="", run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, address=registry,
                          author=settings.registry_author, **labels)
        task.after(saved)
        settings.apply(task, "backup", cache=False)
