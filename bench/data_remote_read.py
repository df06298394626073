"""Peak memory and speed of the data stage reading a corpus in place on S3 (a local SeaweedFS), against the same
corpus on local disk.

A ~1 GB corpus of English news sentences is written twice: as Parquet shards (row groups of 8,192 rows) and as
JSONL shards, uploaded to SeaweedFS, then ``aptops data clean`` runs on ``s3://.../parquet/``, ``s3://.../jsonl/``
and the local Parquet folder, and on the whole corpus as one JSONL file on S3, each in its own process. Reported: peak
RSS of that process (``ru_maxrss`` of the child), seconds, MB/s of corpus. The reader goes a file at a time, Parquet a
row group at a time and JSONL / text a 64 MiB block of whole lines at a time, so memory stays flat in the corpus'
size and in any one file's.

Run on a CPU: ``python bench/data_remote_read.py [--mb 1024] [--shards 16]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import sys, time, json, resource
from aptops.data import CleanConfig, clean_dataset
start = time.perf_counter()
result = clean_dataset(sys.argv[1], output_dir=sys.argv[2], config=CleanConfig(strategy="basic"))
print(json.dumps({"seconds": time.perf_counter() - start, "rows": result.metrics["rows_in"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_corpus(folder: Path, megabytes: int, shards: int, seed: int) -> tuple[Path, Path, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from gensim.test.utils import datapath

    sentences = [s.strip() for s in Path(datapath("lee_background.cor")).read_text().split(".") if len(s.split()) > 4]
    rng = random.Random(seed)
    parquet, jsonl = folder / "parquet", folder / "jsonl"
    parquet.mkdir(parents=True)
    jsonl.mkdir()
    per_shard, rows = megabytes * 1024 * 1024 // shards, 0
    for i in range(shards):
        texts, size = [], 0
        while size < per_shard:
            text = ". ".join(rng.choice(sentences) for _ in range(rng.randint(3, 12))) + "."
            texts.append(text)
            size += len(text)
        rows += len(texts)
        pq.write_table(pa.table({"text": texts}), parquet / f"part-{i:03d}.parquet", row_group_size=8192)
        with (jsonl / f"part-{i:03d}.jsonl").open("w") as fh:
            fh.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return parquet, jsonl, rows


def clean_in_child(source: str, out: Path, env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, source, str(out)], capture_output=True, text=True,
                          env={**os.environ, **env, "APTOPS_NO_PROGRESS": "1"}, check=False)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_remote_read.json")
    args = parser.parse_args()
    from tests.services.servers import start_seaweedfs

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        work = Path(tmp)
        parquet, jsonl, rows = write_corpus(work / "corpus", args.mb, args.shards, 0)
        sizes = {name: sum(f.stat().st_size for f in folder.iterdir()) for name, folder in
                 (("parquet", parquet), ("jsonl", jsonl))}
        s3 = start_seaweedfs(work / "seaweedfs")
        try:
            client = s3.client()
            client.create_bucket(Bucket="corpus")
            for folder in (parquet, jsonl):
                for f in sorted(folder.iterdir()):
                    client.upload_file(str(f), "corpus", f"{folder.name}/{f.name}")
            single = work / "all.jsonl"
            with single.open("wb") as fh:
                for f in sorted(jsonl.iterdir()):
                    fh.write(f.read_bytes())
            client.upload_file(str(single), "corpus", "single/all.jsonl")
            single.unlink()
            env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                   "AWS_ENDPOINT_URL": s3.endpoint}
            results = {}
            for name, source in (("local parquet", str(parquet)), ("s3 parquet", "s3://corpus/parquet/"),
                                 ("s3 jsonl", "s3://corpus/jsonl/"), ("s3 one jsonl", "s3://corpus/single/all.jsonl")):
                r = clean_in_child(source, work / "out" / name.replace(" ", "-"), env)
                text_mb = args.mb
                results[name] = {**r, "mb_per_s": text_mb / r["seconds"]}
                print(f"{name:>14}: {r['rows']:,.0f} rows in {r['seconds']:.1f} s ({text_mb / r['seconds']:.1f} MB/s "
                      f"of text), peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
        finally:
            s3.server.stop()
    report = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "text_mb": args.mb, "shards": args.shards, "rows": rows, "file_bytes": sizes,
              "largest_shard_mb": {k: v / args.shards / 2**20 for k, v in sizes.items()}, "results": results,
              "when": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
