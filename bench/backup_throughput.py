"""Backup and restore throughput to a real S3 server on loopback: aptops vs boto3's TransferManager.

A model-like folder (a few large weight shards plus small JSON files, ~1 GB by default) goes up and comes
back through both, in the same run, against SeaweedFS (``weed mini``, auth on). aptops' figures include
its verification (SHA-256 of every file before upload and after download, the manifest); boto3's are its
``upload_file`` / ``download_file`` with default ``TransferConfig``, file by file, with no verification.

Each figure is the median of ``--rounds`` rounds that alternate who goes first.

Run on a CPU: ``python bench/backup_throughput.py [--size-mb 512] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_model(folder: Path, size_mb: int) -> int:
    folder.mkdir(parents=True)
    shard = max(1, size_mb // 4) * 1024 * 1024
    total, i = 0, 0
    while total < size_mb * 1024 * 1024:
        n = min(shard, size_mb * 1024 * 1024 - total)
        with (folder / f"model-{i:05d}.safetensors").open("wb") as fh:
            for _ in range(n // (1024 * 1024)):
                fh.write(os.urandom(1024 * 1024))
        total += n
        i += 1
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        (folder / name).write_text(json.dumps({"name": name, "pad": "x" * 2000}))
        total += (folder / name).stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backup_throughput.json")
    args = parser.parse_args()
    os.environ.setdefault("APTOPS_NO_PROGRESS", "1")
    from aptops.backup import BackupConfig, backup_model, restore_from_cloud
    from tests.services.servers import start_seaweedfs

    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    s3 = start_seaweedfs(work / "weed")
    try:
        model = work / "model"
        total = make_model(model, args.size_mb)
        creds = {"aws_access_key_id": s3.access_key, "aws_secret_access_key": s3.secret_key}
        cfg = BackupConfig(endpoint_url=s3.endpoint)
        client = s3.client()
        bucket = f"bench-{uuid.uuid4().hex[:6]}"
        client.create_bucket(Bucket=bucket)

        def boto3_round(i: int) -> tuple[float, float]:
            t = time.perf_counter()
            for f in sorted(model.iterdir()):
                client.upload_file(str(f), bucket, f"boto3-{i}/{f.name}")
            up = time.perf_counter() - t
            back = work / f"boto3-back-{i}"
            back.mkdir()
            t = time.perf_counter()
            for f in sorted(model.iterdir()):
                client.download_file(bucket, f"boto3-{i}/{f.name}", str(back / f.name))
            down = time.perf_counter() - t
            shutil.rmtree(back)
            return up, down

        def aptops_round(i: int) -> tuple[float, float]:
            t = time.perf_counter()
            res = backup_model(model, [f"s3://{bucket}/aptops-{i}"], cfg, credentials=creds)
            up = time.perf_counter() - t
            assert res.ok, res.destinations
            t = time.perf_counter()
            restore_from_cloud(f"s3://{bucket}/aptops-{i}", None, work / f"aptops-back-{i}", cfg, credentials=creds)
            down = time.perf_counter() - t
            shutil.rmtree(work / f"aptops-back-{i}")
            return up, down

        rounds = []
        for i in range(args.rounds):  # alternate who goes first: the server's background work is shared
            order = [("boto3", boto3_round), ("aptops", aptops_round)]
            if i % 2:
                order.reverse()
            timing = {name: fn(i) for name, fn in order}
            rounds.append({("boto3_transfer_manager" if name == "boto3" else name): {"upload_MBps": total / up / 1e6, "download_MBps": total / down / 1e6}
                           for name, (up, down) in timing.items()})
            print(f"round {i}: " + ", ".join(f"{k} up {v['upload_MBps']:.0f} down {v['download_MBps']:.0f} MB/s"
                                             for k, v in rounds[-1].items()), flush=True)
        results = {name: {k: statistics.median(r[name][k] for r in rounds) for k in ("upload_MBps", "download_MBps")}
                   for name in ("boto3_transfer_manager", "aptops")}

        ratios = {k: results["aptops"][k] / results["boto3_transfer_manager"][k] for k in ("upload_MBps", "download_MBps")}
        report = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
                  "bytes": total, "rounds": rounds, "results_median": results, "ratio_aptops_vs_boto3": ratios}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
    finally:
        s3.server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
