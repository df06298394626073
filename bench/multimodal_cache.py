"""Multimodal training with and without cached frozen-encoder features, same run, same data.

The sample task (``aptops.multimodal.samples``: scikit-image photo crops, ALSA speech segments, captions;
6 classes x 24 rows) trains the same model twice per setting, interleaved (off, on, off, on): the real
all-MiniLM-L6-v2 text encoder, a small ViT and a small Wav2Vec2, concat fusion. Settings:

- ``text frozen``: MiniLM frozen (cached), image and audio encoders train (run live every step);
- ``all frozen``: every encoder frozen, only projections, fusion and head train (a probe).

Reported: training samples/s (the Trainer loop) and end-to-end samples/s (the one-time cache pass
included), median of the repeats, as the ratio cached / uncached, and the held-out accuracy of both (the
cache must not change what is learned). Also with the 22M-parameter MiniLM at larger batches, the
encoder forward is what caching removes.

Run: ``python bench/multimodal_cache.py`` (``--epochs`` / ``--repeats`` to change the size).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

from common import torch_machine, write_report


def run_once(task: Path, frozen: tuple[str, ...], cache: bool, epochs: float, work: Path) -> dict[str, float]:
    import torch

    from aptops.core.assets import minilm_folder
    from aptops.multimodal import create_multimodal_dataloader, create_multimodal_model, train_multimodal
    from aptops.multimodal.recipe import TINY_ENCODERS

    torch.manual_seed(0)
    model = create_multimodal_model(str(minilm_folder()), dict(TINY_ENCODERS["image"]), dict(TINY_ENCODERS["audio"]),
                                    "concat", num_labels=6, hidden_size=64, freeze=frozen)
    train = create_multimodal_dataloader(manifest=task / "train.jsonl", model=model, batch_size=16, seed=0)
    evaluation = create_multimodal_dataloader(manifest=task / "eval.jsonl", model=model, batch_size=16,
                                              shuffle=False, label2id=train.dataset.label2id)
    run = train_multimodal(model, train, epochs=epochs, eval_dataloader=evaluation, output_dir=work,
                           cache_features=cache, gradient_balance="none",
                           training_args={"save_strategy": "no", "eval_strategy": "no", "disable_tqdm": True})
    m = run["metrics"]
    rows = len(train.dataset) * epochs
    total = m["train_runtime_s"] + m.get("cache_seconds", 0.0)
    return {"train_samples_per_s": m["samples_per_second"], "end_to_end_samples_per_s": rows / total,
            "cache_seconds": m.get("cache_seconds", 0.0), "eval_accuracy": m["eval_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "multimodal_cache.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from aptops.multimodal.samples import build_sample_task

    settings = {"text frozen": ("text",), "all frozen": ("text", "image", "audio")}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        task = build_sample_task(Path(tmp) / "task", classes=6, train_per_class=24, eval_per_class=8, image_size=32)
        for name, frozen in settings.items():
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(args.repeats):
                for cache in (False, True):
                    runs[cache].append(run_once(task, frozen, cache, args.epochs, Path(tmp) / "ckpt"))
            med = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for c, rs in runs.items()}
            results[name] = {
                "uncached": med[False], "cached": med[True],
                "train_speedup": med[True]["train_samples_per_s"] / med[False]["train_samples_per_s"],
                "end_to_end_speedup": med[True]["end_to_end_samples_per_s"] / med[False]["end_to_end_samples_per_s"],
            }
            print(f"{name}: training {results[name]['train_speedup']:.2f}x, end to end "
                  f"{results[name]['end_to_end_speedup']:.2f}x, accuracy {med[False]['eval_accuracy']:.3f} -> "
                  f"{med[True]['eval_accuracy']:.3f}", flush=True)
    write_report(args.out, {"benchmark": "multimodal_cache", "epochs": args.epochs, "repeats": args.repeats,
                            "machine": torch_machine(), "results": results})


if __name__ == "__main__":
    main()
