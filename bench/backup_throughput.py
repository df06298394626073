"""Backup and restore throughput to a real S3 server on loopback: aptops vs boto3's TransferManager.

A model-like folder (a few large weight shards plus small JSON files, ~1 GB by default) goes up and comes
back through both, in the same run, against SeaweedFS (``weed mini``, auth on). aptops' figures include
its verification (the manifest's SHA-256 of every file, CRC32C of every part; SHA-256 again after
download); boto3's are its ``upload_file`` / ``download_file`` with default ``TransferConfig``, file by file,
with no whole-file verification.

aptops uploads twice a round: ``aptops_first_backup`` hashes every byte (``reuse_hashes=False``: a folder
never backed up before), ``aptops_unchanged_folder`` takes the SHA-256 of the unchanged files from the hash
cache (``aptops.backup.hashcache``, primed before the rounds: the folder backed up before, to another
destination or prefix). Both go to a fresh prefix, so every byte is sent. Each figure is the median of
``--rounds`` rounds that rotate who goes first; the ratios are medians of the per-round ratios. ``client_cpu_s`` is the benchmark process's CPU time (user + system)
for the contender's upload and download, the server's excluded: a steadier figure than the wall time, which
moves by ±15% from round to round on 2 cores shared with the server.

Run on a CPU: ``python bench/backup_throughput.py [--size-mb 512] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backup_throughput.json")
    args = parser.parse_args()
    os.environ.setdefault("APTOPS_NO_PROGRESS", "1")
    from aptops.backup import BackupConfig, backup_model, restore_from_cloud
    from aptops.backup.hashcache import HashCache
    from tests.services.servers import start_seaweedfs

    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    os.environ["APTOPS_CACHE_DIR"] = str(work / "cache")  # the bench's own hash cache and upload states
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

        def aptops_round(i: int, reuse: bool) -> tuple[float, float | None]:
            dest = f"s3://{bucket}/aptops-{'cached' if reuse else 'cold'}-{i}"
            t = time.perf_counter()
            res = backup_model(model, [dest], replace(cfg, reuse_hashes=reuse), credentials=creds)
            up = time.perf_counter() - t
            assert res.ok, res.destinations
            if reuse:  # the restore does not depend on how the backup hashed; timed once a round
                return up, None
            t = time.perf_counter()
            restore_from_cloud(dest, None, work / f"aptops-back-{i}", cfg, credentials=creds)
            down = time.perf_counter() - t
            shutil.rmtree(work / f"aptops-back-{i}")
            return up, down

        time.sleep(2.5)  # past the hash cache's settle window, then prime it as a previous backup would
        with HashCache() as cache:
            for f in model.iterdir():
                cache.sha256(f)
        contenders = [("boto3_transfer_manager", boto3_round), ("aptops_first_backup", lambda i: aptops_round(i, False)),
                      ("aptops_unchanged_folder", lambda i: aptops_round(i, True))]
        rounds = []
        for i in range(args.rounds):  # rotate who goes first: the server's background work is shared
            order = contenders[i % 3:] + contenders[:i % 3]
            timing, cpu = {}, {}
            for name, fn in order:
                os.sync()  # the previous contender's writes reach the disk before this one starts
                before = resource.getrusage(resource.RUSAGE_SELF)
                timing[name] = fn(i)
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu[name] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            rounds.append({name: {"upload_MBps": total / up / 1e6} | ({"download_MBps": total / down / 1e6} if down else {})
                           | {"client_cpu_s": cpu[name]} for name, (up, down) in timing.items()})
            print(f"round {i}: " + ", ".join(f"{k} " + " ".join(f"{m.split('_')[0]} {v:.1f}" for m, v in r.items())
                                             for k, r in rounds[-1].items()) + " MB/s", flush=True)
        results = {name: {k: statistics.median(r[name][k] for r in rounds) for k in rounds[0][name]}
                   for name, _ in contenders}
        base = "boto3_transfer_manager"
        ratios = {f"{name}_{k}": statistics.median(r[name][k] / r[base][k] for r in rounds)
                  for name, _ in contenders[1:] for k in rounds[0][name] if k != "client_cpu_s"}
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
