"""Peak memory of sharded near-duplicate removal on a million synthetic documents.

Documents are generated straight into Parquet shards (streaming), with 5% planted near duplicates, then
the three sharded steps run as ``aptops data dedup`` runs them. Reported: peak RSS of this process
(the steps run in it), seconds per step, documents per second.

Run on a CPU: ``python bench/data_dedup_scale.py [--docs 1000000] [--shard-rows 50000]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_corpus(folder: Path, docs: int, shard_rows: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aptops.core.artifacts import StageResult, atomic_output, finish_artifact

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(50_000)]
    with atomic_output(folder) as tmp:
        recent: list[str] = []
        for shard, start in enumerate(range(0, docs, shard_rows)):
            rows = []
            for _ in range(min(shard_rows, docs - start)):
                if recent and rng.random() < 0.05:
                    words = rng.choice(recent).split()
                    words[rng.randrange(len(words))] = rng.choice(vocab)
                else:
                    words = rng.choices(vocab, k=rng.randint(30, 120))
                text = " ".join(words)
                rows.append(text)
                if rng.random() < 0.01:
                    recent = [*recent, text][-1000:]
            pq.write_table(pa.table({"text": rows}), tmp / f"part-{shard:05d}.parquet")
        finish_artifact(tmp, StageResult("data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_dedup_scale.json")
    args = parser.parse_args()
    os.environ.setdefault("APTOPS_NO_PROGRESS", "1")
    from aptops.data import DedupConfig, dedup_dataset

    work = Path(tempfile.mkdtemp(prefix="aptops-scale-"))
    try:
        t0 = time.perf_counter()
        write_corpus(work / "ds", args.docs, args.shard_rows, seed=0)
        gen_s = time.perf_counter() - t0
        rss_before = peak_rss_mib()
        t1 = time.perf_counter()
        result = dedup_dataset(work / "ds", output_dir=work / "out", config=DedupConfig(threshold=0.8, tokenizer="word"))
        dedup_s = time.perf_counter() - t1
        report = {
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
            "docs": args.docs, "shard_rows": args.shard_rows, "generate_s": gen_s, "dedup_s": dedup_s,
            "docs_per_s": args.docs / dedup_s, "peak_rss_mib_before_dedup": rss_before,
            "peak_rss_mib": peak_rss_mib(), **result.metrics,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
