"""Overhead of the training debugger: the same Trainer steps plain, with aptops' default monitors, and
under ``torch.profiler``, in this one process.

Each round trains a fresh copy of the model for the same steps on the same packed blocks with the same
``TrainingArguments`` three ways, in rotating order: plain ``transformers.Trainer``; with the aptops
debugger attached (``DebugConfig()`` defaults: gradients, activations and update ratios every 10 steps,
memory sampled every second, the NaN check on every step; no report, which is written once after
training); and with ``torch.profiler.profile`` (CPU activities, ``profiler.step()`` per step). The figure
is the median over rounds of each run's ``train_runtime`` divided by the plain run's.

Run: ``python bench/debug_overhead.py`` (SmolLM2-135M, 20 steps x 3 rounds) or ``--tiny``.
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
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "debug_overhead.json")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers

    from aptops.debug import DebugConfig, debug_callback
    from aptops.lm import pack_for_clm

    work = Path(tempfile.mkdtemp(prefix="aptops-bench-debug-"))
    model_dir, name = model_under_test(args.tiny, work)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    blocks = pack_for_clm(datasets.Dataset.from_dict({"text": english_news()}), tokenizer, block_size=args.block_size)

    class ProfilerCallback(transformers.TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()

        def on_step_end(self, *a, **k):
            self.prof.step()

        def on_train_end(self, *a, **k):
            self.prof.__exit__(None, None, None)

    def run(mode: str, i: int) -> float:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
        callbacks = []
        if mode == "debug":
            callbacks.append(debug_callback(DebugConfig())[0])
        elif mode == "profiler":
            callbacks.append(ProfilerCallback())
        targs = transformers.TrainingArguments(
            output_dir=str(work / f"{mode}-{i}"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            learning_rate=1e-4, use_cpu=not torch.cuda.is_available(), logging_steps=5, save_strategy="no",
            report_to="none", seed=0, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=targs, train_dataset=blocks, callbacks=callbacks,
                                       data_collator=transformers.default_data_collator)
        return float(trainer.train().metrics["train_runtime"])

    run("plain", -1)  # warm-up
    modes = ["plain", "debug", "profiler"]
    rows = []
    for i in range(args.rounds):
        order = modes[i % 3:] + modes[:i % 3]
        times = {m: run(m, i) for m in order}
        rows.append({**{f"{m}_s": t for m, t in times.items()}, "debug_ratio": times["debug"] / times["plain"],
                     "profiler_ratio": times["profiler"] / times["plain"]})
        print(f"round {i}: " + ", ".join(f"{m} {t:.2f} s" for m, t in times.items()), flush=True)
    debug_ratio = statistics.median(r["debug_ratio"] for r in rows)
    profiler_ratio = statistics.median(r["profiler_ratio"] for r in rows)
    report = {
        "machine": torch_machine(),
        "model": name, "steps": args.steps, "block_size": args.block_size, "batch_size": args.batch_size,
        "rounds": rows, "median_ratio_debug_vs_plain": debug_ratio,
        "median_ratio_profiler_vs_plain": profiler_ratio, "debug_overhead_percent": (debug_ratio - 1) * 100,
        "goal": "default monitors at most 3% overhead",
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
