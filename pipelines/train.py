"""The ``train`` pipeline: dataset → train → evaluate (held-out perplexity; eval tasks when given, base and
trained) → optional Hub publish.

Run it on a CPU with the bundled SmolLM2 (``make demo`` builds the folder) and a small corpus::

    aptops run train --local --param model=runs/assets/smollm2 --param source=/usr/share/games/fortunes/fortunes \\
        --param separator=% --param max_steps=20 --param block_size=128
"""

from typing import Any

from kfp import dsl

from aptops.cluster.settings import ClusterSettings
from aptops_components import backup as backup_components
from aptops_components import data as data_components
from aptops_components import hub as hub_components
from aptops_components import train as train_components
from aptops_pipelines.evaluation import judge


def build(settings: ClusterSettings) -> Any:
    clean_text = settings.component(data_components.clean_text, "data")
    import_model = settings.component(hub_components.import_model, "hub")
    train_model = settings.component(train_components.train_model, "train")
    evaluate_model = settings.component(train_components.evaluate_model, "train")
    export_model = settings.component(hub_components.export_model, "hub")
    backup = settings.component(backup_components.backup_artifact, "backup")
    register = settings.component(backup_components.register_model, "backup")

    @dsl.pipeline(name="aptops-train", description="Clean a corpus, fine-tune a causal LM on it, evaluate it, "
                  "and optionally publish it to the Hugging Face Hub.")
    def train(
        model: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
        source: str = "/usr/share/games/fortunes/fortunes",
        separator: str = "%",
        text_column: str = "text",
        block_size: int = 256,
        learning_rate: float = 5e-5,
        max_steps: int = -1,
        num_train_epochs: float = 1.0,
        batch_size: int = 8,
        lora_r: int = 0,
        training_args: str = "{}",
        debug: bool = True,
        publish_repo: str = "",
        publish_private: bool = True,
        eval_tasks: str = "",
        eval_include_path: str = "",
        eval_limit: float = 0.0,
        backup_destinations: str = "",
        registry: str = settings.model_registry,
        registry_name: str = "aptops-model",
    ):
        """Clean a corpus, fine-tune a causal LM on it, evaluate it, optionally publish it.

        Args:
            model: a Hub model id or a model folder the tasks can read.
            source: a corpus file or folder (JSONL, Parquet, CSV or text) the tasks can read, or a URI read in place
                (s3://bucket/corpus/, oss://, gs://, hf://datasets/..., https://).
            separator: for text corpora, a regex matching the line between records (empty: one per line).
            text_column: the column holding the text.
            block_size: tokens per training sequence.
            learning_rate: the peak learning rate.
            max_steps: optimizer steps (-1: num_train_epochs decides).
            num_train_epochs: passes over the data when max_steps is -1.
            batch_size: sequences per device per step.
            lora_r: LoRA rank (0: train every weight).
            training_args: JSON of further transformers.TrainingArguments fields.
            debug: attach the training debugger (gradients, activations, memory, NaN checks); its report is
                the train step's debug_report.
            publish_repo: a Hub repo (namespace/name) to publish to; empty: do not publish.
            publish_private: create the published repo private.
            eval_tasks: lm-evaluation-harness tasks that judge the base and the trained model (comma-separated
                harness names, or tasks in eval_include_path); empty: none.
            eval_include_path: a folder of task YAML files of your own the tasks can read; empty: harness tasks only.
            eval_limit: at most this many documents per eval task (0: all).
            backup_destinations: comma-separated locations for the trained model folder; empty: no backup.
            registry: Kubeflow Model Registry's address (the cluster file's model_registry): the backed-up model is
                registered as a version of registry_name, named by its content, with its metrics, task results and
                lineage; empty: no registration.
            registry_name: the registered model.
        """
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        clean = clean_text(source=source, separator=separator, text_column=text_column, pipeline="train",
                           run_id=run_id)
        settings.apply(clean, "data")
        base = import_model(repo=model, pipeline="train", run_id=run_id)
        settings.apply(base, "hub")
        trained = train_model(model=base.outputs["model"], dataset=clean.outputs["dataset"], block_size=block_size,
                              text_column=text_column, learning_rate=learning_rate, max_steps=max_steps,
                              num_train_epochs=num_train_epochs, batch_size=batch_size, lora_r=lora_r,
                              training_args=training_args, debug=debug, pipeline="train", run_id=run_id)
        settings.apply(trained, "train", trains=True)
        evaluated = evaluate_model(base=base.outputs["model"], trained=trained.outputs["trained"],
                                   dataset=trained.outputs["heldout"], block_size=block_size,
                                   text_column=text_column, pipeline="train", run_id=run_id)
        settings.apply(evaluated, "train")
        judged = judge(settings, tasks=eval_tasks, include_path=eval_include_path, limit=eval_limit,
                       labels={"pipeline": "train", "run_id": run_id})
        after = judged(trained.outputs["trained"], "trained", baseline=base.outputs["model"])
        with dsl.If(publish_repo != "", name="publish"):
            published = export_model(model=trained.outputs["trained"], repo=publish_repo, private=publish_private,
                                     evaluation=after.outputs["results"], pipeline="train", run_id=run_id)
            published.after(evaluated)
            settings.apply(published, "hub", cache=False)
        labels = {"pipeline": "train", "run_id": run_id}
        with dsl.If(backup_destinations != "", name="backup"):
            saved = backup(model=trained.outputs["trained"], destinations=backup_destinations, **labels)
            saved.after(evaluated)
            settings.apply(saved, "backup", cache=False)
            with dsl.If(registry != "", name="registry"):
                entry = register(model=trained.outputs["trained"], evaluation=after.outputs["results"],
                                 destinations=backup_destinations, name=registry_name, version="",
                                 run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, address=registry,
                                 author=settings.registry_author, **labels)
                entry.after(saved)
                settings.apply(entry, "backup", cache=False)

    return train
