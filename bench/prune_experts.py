"""Expert pruning by routing statistics against removing the same number of experts at random.

A small Qwen3-MoE (4 blocks, 8 experts, 2 per token, 128 wide) is trained from scratch, with the load-balancing loss
real MoEs are trained with, on English news (gensim's Lee
corpus) until its routers have preferences, then half of each layer's experts are removed: the ones its router sent
the fewest calibration tokens to (``method=expert``), or as many chosen at random (10 draws). Reported, on held-out
text the calibration never saw, without any recovery training: perplexity, KL divergence from the unpruned model's
next-token distribution, top-1 agreement with it, and the share of the routers' choices that went to the kept experts.

Run on a CPU: ``python bench/prune_experts.py [--steps 300] [--draws 10]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def corpus() -> tuple[list[str], list[str]]:
    from gensim.test.utils import datapath

    lines = [line.strip() for line in Path(datapath("lee_background.cor")).read_text().splitlines() if line.strip()]
    return lines[: int(len(lines) * 0.8)], lines[int(len(lines) * 0.8):]


def blocks(tok, texts, size=64):
    ids = tok("\n".join(texts), return_tensors="pt")["input_ids"][0]
    n = len(ids) // size
    return ids[: n * size].view(n, size)


def evaluate(model, reference_logits, held):
    import torch

    with torch.no_grad():
        out = model(input_ids=held, labels=held)
        logp = torch.log_softmax(out.logits.float(), -1)
        ref = torch.log_softmax(reference_logits, -1)
        kl = (ref.exp() * (ref - logp)).sum(-1).mean()
        top1 = (out.logits.argmax(-1) == reference_logits.argmax(-1)).float().mean()
    return {"perplexity": float(torch.exp(out.loss)), "kl_from_unpruned": float(kl), "top1_agreement": float(top1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prune_experts.json")
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aptops.prune.structured import expert_routing_counts, prune_experts
    from tests.models import build_tiny_causal_lm

    torch.manual_seed(0)
    train, held_texts = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_causal_lm(Path(tmp) / "moe", "qwen3_moe", vocab_size=2048, num_hidden_layers=4,
                                      hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                      num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                                      norm_topk_prob=True, max_position_embeddings=256, output_router_logits=True,
                                      router_aux_loss_coef=0.02)
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
    data, held = blocks(tok, train), blocks(tok, held_texts)[:32]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        batch = data[torch.randint(0, len(data), (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0:
            print(f"train step {step}: loss {loss.item():.3f}", flush=True)
    model.eval()
    calibration = [{"input_ids": data[i: i + 8]} for i in range(0, 64, 8)]
    with torch.no_grad():
        reference = model(input_ids=held).logits.float()
    counts = expert_routing_counts(model, calibration)
    unpruned = evaluate(model, reference, held)
    routed = copy.deepcopy(model)
    info = prune_experts(routed, 0.5, data_loader=calibration, by="routing")
    by_routing = evaluate(routed, reference, held) | {"routed_share_kept": info["routed_share_kept"]}
    draws = []
    for seed in range(args.draws):
        pruned = copy.deepcopy(model)
        kept = prune_experts(pruned, 0.5, by="random", seed=seed)["kept"]
        share = statistics.fmean(float(counts[i][k].sum() / counts[i].sum()) for i, k in kept.items())
        draws.append(evaluate(pruned, reference, held) | {"routed_share_kept": share})
    at_random = {k: statistics.fmean(d[k] for d in draws) for k in draws[0]}
    spread = {k: statistics.pstdev(d[k] for d in draws) for k in draws[0]}
    print(f"{'':>22} {'perplexity':>11} {'KL':>8} {'top-1':>7} {'routed share kept':>18}")
    for name, r in (("unpruned (8 experts)", unpruned | {"routed_share_kept": 1.0}), ("by routing (4)", by_routing),
                    (f"random (4), {args.draws} draws", at_random)):
        print(f"{name:>22} {r['perplexity']:11.2f} {r['kl_from_unpruned']:8.4f} {r['top1_agreement']:7.3f} "
              f"{r['routed_share_kept']:18.3f}")
    report = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "model": "qwen3_moe 4 blocks x 8 experts (top-2), 128 wide, trained from scratch",
              "train_steps": args.steps, "train_seconds": time.perf_counter() - start,
              "routing_counts": {i: c.tolist() for i, c in counts.items()},
              "unpruned": unpruned, "by_routing": by_routing, "random_mean": at_random, "random_stdev": spread,
              "random_draws": draws, "when": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
