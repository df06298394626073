"""Training-step overhead of aptops' Trainer wrapper against a plain ``transformers.Trainer``.

Both train the same model on the same packed blocks with the same ``TrainingArguments`` (seed, batch,
steps, no evaluation, no checkpoint), in this one process, alternating aptops / plain for several rounds;
the figure is the median ratio of the training-loop time (``train_runtime`` as the Trainer measures it),
so data preparation and saving, which differ by design, are not in it. The two shuffle the blocks with
different seeds (aptops sets its own ``data_seed``); every block has the same shape, so the work per step
is the same. aptops runs with its plugin bus
attached and a subscriber on every step, as the debug stage would.

Run on a CPU: ``python bench/train_overhead.py`` (the real SmolLM2-135M, 10 steps x 3 rounds) or
``--tiny`` for a 2-layer model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import english_news, model_under_test, torch_machine, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer random model instead of SmolLM2-135M")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_overhead.json")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers

    from aptops.core.bus import PluginBus
    from aptops.lm import pack_for_clm
    from aptops.train import TrainConfig, train_with_hf_trainer

    work = Path(tempfile.mkdtemp(prefix="aptops-bench-train-"))
    model_dir, name = model_under_test(args.tiny, work)
    data = datasets.Dataset.from_dict({"text": english_news()})
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    training_args = {"max_steps": args.steps, "per_device_train_batch_size": args.batch_size, "learning_rate": 1e-4,
                     "use_cpu": not torch.cuda.is_available(), "logging_steps": 5, "save_strategy": "no",
                     "report_to": "none", "seed": 0, "disable_tqdm": True}
    config = TrainConfig(block_size=args.block_size, eval_fraction=0.0, resume="never", training_args=training_args)

    class Subscriber:
        name = "bench-subscriber"

        def __init__(self) -> None:
            self.steps = 0

        def on_batch_end(self, **_):
            self.steps += 1

    def run_aptops(i: int) -> float:
        bus = PluginBus()
        bus.subscribe(Subscriber())
        result = train_with_hf_trainer(str(model_dir), None, data, work / f"aptops-{i}", config, bus=bus)
        return result.metrics["train_runtime_s"]

    def run_plain(i: int) -> float:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
        blocks = pack_for_clm(data, tokenizer, block_size=config.block_size, text_column=config.text_column)  # the same blocks; preparation is not timed
        targs = transformers.TrainingArguments(output_dir=str(work / f"plain-{i}"), **training_args)
        trainer = transformers.Trainer(model=model, args=targs, train_dataset=blocks,
                                       data_collator=transformers.default_data_collator)
        return float(trainer.train().metrics["train_runtime"])

    run_plain(-1)  # warm-up: first-touch allocations and kernel selection
    rows = []
    for i in range(args.rounds):
        a = run_aptops(i)
        p = run_plain(i)
        rows.append({"aptops_s": a, "plain_s": p, "ratio": a / p})
        print(f"round {i}: aptops {a:.2f} s, plain Trainer {p:.2f} s, ratio {a / p:.3f}", flush=True)
    ratio = statistics.median(r["ratio"] for r in rows)
    report = {
        "machine": torch_machine(),
        "model": name, "steps": args.steps, "block_size": args.block_size, "batch_size": args.batch_size,
        "rounds": rows, "median_ratio_aptops_vs_plain": ratio,
        "overhead_percent": (ratio - 1) * 100,
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
