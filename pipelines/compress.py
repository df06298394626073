"""The ``compress`` pipeline: clean → import → distill → prune (with fine-tuning) → evaluate compression (and
the original and compressed models on eval tasks, when given).

Run it on a CPU with the SmolLM2 folder (``make demo`` builds it) and a small corpus::

    aptops run compress --local --param model=$HOME/.cache/aptops/models/smollm2-135m-instruct \\
        --param distill_steps=20 --param prune_steps=20 --param block_size=128
"""

from typing import Any

from kfp import dsl

from aptops.cluster.settings import ClusterSettings
from aptops_components import data as data_components
from aptops_components import distill as distill_components
from aptops_components import hub as hub_components
from aptops_components import prune as prune_components
from aptops_pipelines.evaluation import judge


def build(settings: ClusterSettings) -> Any:
    clean_text = settings.component(data_components.clean_text, "data")
    import_model = settings.component(hub_components.import_model, "hub")
    distill = settings.component(distill_components.distill_model, "distill")
    prune = settings.component(prune_components.prune_model, "prune")
    evaluate = settings.component(distill_components.evaluate_compression, "distill")

    @dsl.pipeline(name="aptops-compress", description="Distil a causal LM into a smaller student, prune the student "
                  "with fine-tuning, and measure size, speed and quality against the original.")
    def compress(
        model: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
        source: str = "/usr/share/games/fortunes/fortunes",
        separator: str = "%",
        text_column: str = "text",
        block_size: int = 256,
        strategies: str = '{"response": 1.0}',
        temperature: float = 1.0,
        alpha: float = 0.8,
        student_layer_stride: int = 2,
        student_layers: int = 0,
        student_selection: str = "influence",
        replay: str = "",
        replay_ratio: float = 0.5,
        distill_steps: int = 200,
        prune_method: str = "neuron",
        target_sparsity: float = 0.25,
        prune_steps: int = 100,
        prune_lora_r: int = 0,
        prune_learning_rate: float = 1e-4,
        learning_rate: float = 1e-4,
        batch_size: int = 8,
        training_args: str = "{}",
        eval_tasks: str = "",
        eval_include_path: str = "",
        eval_limit: float = 0.0,
    ):
        """Distil, prune, fine-tune and evaluate a compressed model.

        Args:
            model: the teacher: a Hub model id or a model folder the tasks can read.
            source: the corpus (JSONL, Parquet, CSV or text) for distillation, pruning and evaluation.
            separator: for text corpora, a regex matching the line between records (empty: one per line).
            text_column: the column holding the text.
            block_size: tokens per sequence.
            strategies: JSON {strategy: weight} over response, feature, relation, attention.
            temperature: response distillation's softening temperature.
            alpha: weight of the teacher's soft targets against the hard labels.
            student_layer_stride: the student keeps every k-th teacher block.
            student_layers: ... or this many blocks (0: the stride decides), chosen by student_selection.
            student_selection: influence (the blocks that change their input most, measured on the replay text
                when there is one, else on the training text) or spread.
            replay: general text (a file or folder the tasks can read) mixed into distillation and recovery, so the
                student keeps what the teacher knew; empty: the corpus alone.
            replay_ratio: the share of training blocks taken from replay.
            distill_steps: optimizer steps of distillation (0: the student as made from the selected blocks).
            prune_method: magnitude, taylor, wanda, neuron, head or lottery.
            target_sparsity: share of weights (unstructured) or units (neuron, head) removed.
            prune_steps: optimizer steps of fine-tuning after pruning (0: none).
            prune_lora_r: recover through LoRA adapters of this rank, merged after (0: every weight); the kept weights
                stay as they were, which keeps what they know.
            prune_learning_rate: the peak learning rate of the recovery after pruning.
            learning_rate: the peak learning rate of distillation.
            batch_size: sequences per device per step.
            training_args: JSON of further transformers.TrainingArguments fields for both trainings.
            eval_tasks: lm-evaluation-harness tasks that judge the original and the compressed model
                (comma-separated harness names, or tasks in eval_include_path); empty: none.
            eval_include_path: a folder of task YAML files of your own the tasks can read; empty: harness tasks only.
            eval_limit: at most this many documents per eval task (0: all).
        """
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        clean = clean_text(source=source, separator=separator, text_column=text_column, pipeline="compress",
                           run_id=run_id)
        settings.apply(clean, "data")
        teacher = import_model(repo=model, pipeline="compress", run_id=run_id)
        settings.apply(teacher, "hub")
        student = distill(teacher=teacher.outputs["model"], dataset=clean.outputs["dataset"], strategies=strategies,
                          temperature=temperature, alpha=alpha, student_layer_stride=student_layer_stride,
                          student_layers=student_layers, student_selection=student_selection, replay=replay,
                          replay_ratio=replay_ratio, block_size=block_size, learning_rate=learning_rate, max_steps=distill_steps,
                          batch_size=batch_size, training_args=training_args, pipeline="compress", run_id=run_id)
        settings.apply(student, "distill", trains=True)
        pruned = prune(model=student.outputs["student"], dataset=clean.outputs["dataset"], method=prune_method,
                       target_sparsity=target_sparsity, block_size=block_size, learning_rate=prune_learning_rate,
                       lora_r=prune_lora_r,
                       replay=replay, replay_ratio=replay_ratio, max_steps=prune_steps, batch_size=batch_size, training_args=training_args,
                       pipeline="compress", run_id=run_id)
        settings.apply(pruned, "prune", trains=True)
        evaluated = evaluate(original=teacher.outputs["model"], compressed=pruned.outputs["pruned"],
                             dataset=clean.outputs["dataset"], block_size=block_size, pipeline="compress",
                             run_id=run_id)
        settings.apply(evaluated, "distill")
        judged = judge(settings, tasks=eval_tasks, include_path=eval_include_path, limit=eval_limit,
                       labels={"pipeline": "compress", "run_id": run_id})
        judged(pruned.outputs["pruned"], "compressed", baseline=teacher.outputs["model"], baseline_label="original")

    return compress
