"""What each choice of the compression recipe keeps of a trained model's knowledge, on 400-question tasks.

``compression_recipes.py`` compares whole recipes against their peers on 100-question tasks, whose standard error
(about 0.045) hides differences under 6 points. This script takes the model ``make demo`` trains (SmolLM2-135M-Instruct
fine-tuned on the fortunes with news replayed) and changes one choice at a time, each judged by the eval stage on
two independent draws (seeds 0 and 1) of 400-question versions of ``wordnet_words`` and ``word_analogies`` (standard
error about 0.023 per accuracy, about 3 points on a "kept" ratio), and by its perplexity on the held-out fortunes in the chat format it was trained in.
Every variant is about 0.75x the trained model's
parameters except the 24-block students:

- what is removed, with no training: 24 of 30 blocks by Block Influence measured on general text (the news the run
  replays; aptops' choice) or on the task's chat-formatted text, then 20% of the MLP neurons by activation measured
  on the task's text (aptops' choice), on the news, or on both; 25 / 26 blocks with 24% / 28% of the neurons; the 6
  blocks whose removal changes the output
  distribution least, chosen greedily by KL on the calibration text (the "by calibration loss" alternative);
  the same neurons removed with the kept down-projection refitted by least squares on the calibration activations
  (the reconstruction step of SlimGPT / FLAP-style compensation);
- what training does at the demo's budget (batch 4 x 128 tokens, news replayed in half the blocks): recovery after
  aptops' choice, 5 steps on every weight or 10 steps of LoRA (rank 8) at two learning rates; 10 distillation
  steps after pruning (Minitron's order: prune, then distil from the trained teacher) on every weight, and the same
  with LoRA (rank 8) that leaves the kept weights as they are; the demo's recipe (5 distillation steps, prune, 5
  recovery steps) and the same without recovery.

Run: ``python bench/compression_ablation.py --trained DIR --data DIR --replay FILE`` with the ``trained`` model and
the ``dataset`` of a ``make demo`` run (about 20 minutes on 2 cores). Results: ``results/compression_ablation.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import torch_machine, write_report

PROMPT = "Tell me a fortune."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trained", type=Path, required=True, help="the trained model folder of a make demo run")
    parser.add_argument("--data", type=Path, required=True, help="the dataset artifact it was trained on")
    parser.add_argument("--replay", type=Path, required=True, help="the general text replayed (runs/replay/news.txt)")
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compression_ablation.json")
    args = parser.parse_args()

    import torch
    import transformers
    from gensim.test.utils import datapath

    from aptops.distill import DistillConfig, create_student, distill_model
    from aptops.distill.distiller import StrategyConfig
    from aptops.distill.recipe import calibration_batches, replay_calibration_batches
    from aptops.eval import HarnessConfig, build_wordnet_task, evaluate_tasks
    from aptops.lm import EvalConfig
    from aptops.lm.importance import block_influence, most_influential_blocks
    from aptops.lm.scoring import evaluate_perplexity
    from aptops.lm.training import TrainConfig, split_heldout
    from aptops.prune import PruneConfig, prune_model
    from aptops.prune.structured import prune_neurons

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="aptops-bench-ablation-"))
    question_sets = {seed: work / f"tasks-{seed}" for seed in (0, 1)}  # two draws of the questions
    for seed, folder in question_sets.items():
        build_wordnet_task(folder, questions=args.questions, seed=seed, analogies=datapath("questions-words.txt"))
    tok = transformers.AutoTokenizer.from_pretrained(args.trained)

    def training(steps: int, lr: float = 1e-4, lora: int = 0) -> TrainConfig:
        return TrainConfig(block_size=128, chat_prompt=PROMPT, eval_fraction=0.1, replay=str(args.replay),
                           replay_ratio=0.5, seed=42, lora_r=lora, training_args={
                               "max_steps": steps, "per_device_train_batch_size": 4, "learning_rate": lr,
                               "use_cpu": True, "report_to": []})

    def load(folder: Path) -> Any:
        return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def save(model: Any, name: str) -> Path:
        model.save_pretrained(work / name)
        tok.save_pretrained(work / name)
        return work / name

    teacher = load(args.trained)
    calibration = calibration_batches(tok, str(args.data), training(1), 8)
    influence = block_influence(teacher, calibration)
    made: dict[str, Path] = {}
    seconds: dict[str, float] = {}

    def structure(blocks: list[int], ratio: float, neuron_text: list[dict[str, Any]] | None = None) -> Any:
        model = create_student(load(args.trained), keep_layers=blocks)
        if ratio:
            prune_neurons(model, ratio, data_loader=neuron_text or calibration)
        return model

    def timed(name: str, make: Any) -> None:
        start = time.perf_counter()
        made[name] = make()
        seconds[name] = round(time.perf_counter() - start, 1)
        print(name, seconds[name], "s", flush=True)

    news = replay_calibration_batches(tok, training(1), 8)
    on_news = most_influential_blocks(block_influence(teacher, news), 24)
    timed("news-blocks24", lambda: save(structure(on_news, 0), "news-blocks24"))
    timed("news-blocks24+neurons20", lambda: save(structure(on_news, 0.2), "news-blocks24+neurons20"))
    timed("news-blocks24+neurons20-on-news", lambda: save(structure(on_news, 0.2, news), "news-neurons-on-news"))
    timed("news-blocks24+neurons20-on-both",
          lambda: save(structure(on_news, 0.2, calibration[:4] + news[:4]), "news-neurons-on-both"))
    by_influence = {n: most_influential_blocks(influence, n) for n in (24, 25, 26)}
    timed("blocks24", lambda: save(structure(by_influence[24], 0), "blocks24"))
    timed("blocks24+neurons20", lambda: save(structure(by_influence[24], 0.2), "blocks24+neurons20"))
    timed("blocks25+neurons24", lambda: save(structure(by_influence[25], 0.245), "blocks25+neurons24"))
    timed("blocks26+neurons28", lambda: save(structure(by_influence[26], 0.286), "blocks26+neurons28"))
    greedy: list[int] = []
    timed("greedy-kl-blocks24+neurons20",
          lambda: save(structure(greedy_blocks(teacher, calibration[:2], 6, greedy), 0.2), "greedy"))
    timed("blocks24+neurons20+least-squares",
          lambda: save(least_squares_neurons(structure(by_influence[24], 0), calibration, 0.2),
                                  "least-squares"))

    def recovered(name: str, steps: int, lr: float, lora: int) -> Path:
        prune_model(str(made["news-blocks24"]), str(args.data), output_dir=work / name, config=PruneConfig(
            method="neuron", target_sparsity=0.2, training=training(steps, lr=lr, lora=lora)))
        return work / name

    for steps, lr, lora in ((5, 1e-4, 0), (10, 2e-4, 8), (10, 5e-4, 8)):
        name = f"news-blocks24+neurons20+recover{steps}" + (f"-lora{lora}-lr{lr:g}" if lora else f"-lr{lr:g}")
        timed(name, lambda name=name, steps=steps, lr=lr, lora=lora: recovered(name, steps, lr, lora))

    base = made["blocks24+neurons20"]
    for name, cfg in {"blocks24+neurons20+distil10": training(10),
                      "blocks24+neurons20+distil10-lora8": training(10, lr=2e-4, lora=8)}.items():
        timed(name, lambda name=name, cfg=cfg: (distill_model(
            str(args.trained), str(args.data), student=str(base), output_dir=work / name,
            config=DistillConfig(objective=StrategyConfig(alpha=1.0), training=cfg)), work / name)[1])

    def demo(recovery: int, name: str) -> Path:
        distill_model(str(args.trained), str(args.data), output_dir=work / f"{name}-student",
                      config=DistillConfig(student_layers=24, training=training(5)))
        prune_model(str(work / f"{name}-student"), str(args.data), output_dir=work / name,
                    config=PruneConfig(method="neuron", target_sparsity=0.2, training=training(recovery)))
        return work / name

    timed("demo: distil5+neurons20+recover5", lambda: demo(5, "demo"))
    timed("demo without recovery", lambda: demo(0, "demo-no-recovery"))

    params = sum(p.numel() for p in teacher.parameters())
    heldout = work / "heldout.jsonl"  # the documents every training above held out (same fraction, same seed)
    split_heldout(str(args.data), None, training(1)).eval.to_json(str(heldout))
    chat = EvalConfig(block_size=128, batch_size=4, chat_prompt=PROMPT)
    rows: dict[str, Any] = {}
    for recipe, folder in {"trained": args.trained, **made}.items():
        rows[recipe] = {"params_ratio": round(sum(p.numel() for p in load(folder).parameters()) / params, 3),
                        "chat_perplexity": round(evaluate_perplexity(str(folder), str(heldout), chat)["perplexity"], 2),
                        "seconds": seconds.get(recipe)}
        for seed, tasks in question_sets.items():
            judge = HarnessConfig(tasks=("wordnet_words", "word_analogies"), include_path=str(tasks))
            out = work / "eval" / f"{recipe.replace(' ', '_').replace(':', '')}-{seed}"
            scores = evaluate_tasks(str(folder), output_dir=out, config=judge).metrics
            for task in ("wordnet_words", "word_analogies"):
                rows[recipe][f"{task}_{seed}"] = scores[f"{task}_acc"]
                rows[recipe][f"{task}_{seed}_kept"] = round(scores[f"{task}_acc"] / rows["trained"][f"{task}_{seed}"], 3)
        print(recipe, rows[recipe], flush=True)
    write_report(args.out, {"machine": torch_machine(model="SmolLM2-135M-Instruct fine-tuned by make demo"),
                            "questions": args.questions, "question_seeds": list(question_sets), "block_influence": influence, "greedy_kept": greedy,
                            "recipes": rows})


def greedy_blocks(model: Any, batches: list[dict[str, Any]], remove: int, kept: list[int]) -> list[int]:
    """The blocks left after removing, ``remove`` times, the block whose absence changes the model's next-token
    distribution least (KL from the whole model over ``batches``); ``kept`` receives them."""
    import torch

    layers, total = model.model.layers, model.config.num_hidden_layers

    def log_probs() -> list[Any]:
        with torch.no_grad():
            return [torch.log_softmax(model(input_ids=b["input_ids"], use_cache=False).logits.float(), -1)
                    for b in batches]

    reference = log_probs()
    keep = list(range(total))
    try:
        for _ in range(remove):
            trials = {}
            for block in keep:
                model.model.layers = torch.nn.ModuleList([layers[i] for i in keep if i != block])
                model.config.num_hidden_layers = len(keep) - 1
                trials[block] = sum(float((r.exp() * (r - s)).sum(-1).mean())
                                    for r, s in zip(reference, log_probs(), strict=True))
            keep.remove(min(trials, key=trials.__getitem__))
    finally:
        model.model.layers, model.config.num_hidden_layers = layers, total
    kept.extend(keep)
    return keep


def least_squares_neurons(model: Any, batches: list[dict[str, Any]], ratio: float) -> Any:
    """Remove ``ratio`` of each MLP's neurons by activation-aware importance (as aptops does), then refit each kept
    down projection so that, on the calibration activations, it gives what the whole down projection gave."""
    import torch

    from aptops.prune.structured import neuron_importance

    grams: dict[int, Any] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def gram(_module: Any, args: tuple[Any, ...], i: int = i) -> None:
            a = args[0].reshape(-1, args[0].shape[-1]).double()
            grams[i] = grams.get(i, 0) + a.T @ a
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(gram))
    with torch.no_grad():
        for b in batches:
            model(input_ids=b["input_ids"], use_cache=False)
    for h in hooks:
        h.remove()
    width = model.config.intermediate_size
    keep_n = (width - round(width * ratio)) // 8 * 8
    # aptops' own neuron scores, given the activation norms the gram's diagonal holds
    scores = neuron_importance(model, {i: g.diagonal().sqrt() for i, g in grams.items()})
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            mlp, g = layer.mlp, grams[i]
            w = mlp.down_proj.weight.double()
            keep = scores[i].topk(keep_n).indices.sort().values
            g_kk = g[keep][:, keep]
            ridge = 1e-2 * g_kk.diagonal().mean() * torch.eye(keep_n, dtype=g.dtype)
            fitted = torch.linalg.solve(g_kk + ridge, g[keep] @ w.T).T
            for linear in (mlp.gate_proj, mlp.up_proj):
                linear.weight = torch.nn.Parameter(linear.weight.data[keep].clone())
                linear.out_features = keep_n
            mlp.down_proj.weight = torch.nn.Parameter(fitted.float().contiguous())
            mlp.down_proj.in_features = keep_n
    model.config.intermediate_size = keep_n
    return model


if __name__ == "__main__":
    main()
