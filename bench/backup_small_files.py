"""Backup at scale in file count: a folder of 10,000 small files to a real S3 server (SeaweedFS on loopback).

Three ways, each in its own fresh process so its peak RSS is its own: aptops with one object per file,
aptops with the small files packed into one reproducible tar (``pack_small_files_kb``), and boto3's
``upload_file`` / ``download_file`` file by file (no verification) as the reference. For aptops: the first
backup, a second backup of the unchanged folder (everything skipped by the manifest), and a verified restore;
every restored file is compared with the original.

Run on a CPU: ``python bench/backup_small_files.py [--files 10000]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_folder(folder: Path, files: int, seed: int = 0) -> int:
    """``files`` files of 256 B to 16 KiB in 100 subfolders; returns the total size."""
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        path = folder / f"part-{i % 100:03d}" / f"file-{i:06d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(256, 16 * 1024))
        path.write_bytes(data)
        total += len(data)
    return total


def _same(a: Path, b: Path) -> int:
    """How many files of ``a`` are in ``b`` with the same bytes."""
    return sum((b / f.relative_to(a)).is_file() and (b / f.relative_to(a)).read_bytes() == f.read_bytes()
               for f in a.rglob("*") if f.is_file())


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_aptops(folder: str, endpoint: str, creds: dict[str, str], dest: str, pack_kb: int, back: str) -> dict[str, Any]:
    os.environ["APTOPS_NO_PROGRESS"] = "1"
    from aptops.backup import BackupConfig, backup_model, restore_from_cloud

    cfg = BackupConfig(endpoint_url=endpoint, pack_small_files_kb=pack_kb)
    t = time.perf_counter()
    first = backup_model(folder, [dest], cfg, credentials=creds)
    backup_s = time.perf_counter() - t
    assert first.ok, first.destinations
    t = time.perf_counter()
    second = backup_model(folder, [dest], cfg, credentials=creds)
    again_s = time.perf_counter() - t
    peak_backup = _peak_mib()
    t = time.perf_counter()
    restore_from_cloud(dest, None, back, cfg, credentials=creds)
    restore_s = time.perf_counter() - t
    d1, d2 = first.destinations[0], second.destinations[0]
    return {"backup_s": backup_s, "unchanged_backup_s": again_s, "restore_s": restore_s,
            "objects_sent": d1.files_sent, "unchanged_files_skipped": d2.files_skipped,
            "unchanged_objects_sent": d2.files_sent, "peak_rss_mib_after_backups": peak_backup,
            "peak_rss_mib": _peak_mib()}


def run_boto3(folder: str, endpoint: str, creds: dict[str, str], bucket: str, back: str) -> dict[str, Any]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    t = time.perf_counter()
    for f in files:
        client.upload_file(str(f), bucket, f"boto3/{f.relative_to(folder)}")
    backup_s = time.perf_counter() - t
    t = time.perf_counter()
    for f in files:
        target = Path(back) / f.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, f"boto3/{f.relative_to(folder)}", str(target))
    return {"backup_s": backup_s, "restore_s": time.perf_counter() - t, "objects_sent": len(files),
            "peak_rss_mib": _peak_mib()}


def _in_child(fn: Any, *args: Any) -> dict[str, Any]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backup_small_files.json")
    args = parser.parse_args()
    from tests.services.servers import start_seaweedfs

    work = Path(tempfile.mkdtemp(prefix="bench-small-files-"))
    s3 = start_seaweedfs(work / "weed")
    try:
        folder = work / "model"
        total = make_folder(folder, args.files)
        creds = {"aws_access_key_id": s3.access_key, "aws_secret_access_key": s3.secret_key}
        bucket = f"bench-{uuid.uuid4().hex[:6]}"
        s3.client().create_bucket(Bucket=bucket)
        results: dict[str, Any] = {}
        for name, pack_kb in (("aptops_per_file", 0), ("aptops_packed_64k", 64)):
            back = work / f"back-{name}"
            results[name] = _in_child(run_aptops, str(folder), s3.endpoint, creds, f"s3://{bucket}/{name}", pack_kb,
                                      str(back))
            results[name]["files_restored_identical"] = _same(folder, back)
            shutil.rmtree(back)
            print(name, json.dumps(results[name]), flush=True)
        back = work / "back-boto3"
        results["boto3_upload_file_loop"] = _in_child(run_boto3, str(folder), s3.endpoint, creds, bucket, str(back))
        results["boto3_upload_file_loop"]["files_restored_identical"] = _same(folder, back)
        print("boto3", json.dumps(results["boto3_upload_file_loop"]), flush=True)
        for r in results.values():
            r["backup_files_per_s"] = args.files / r["backup_s"]
            r["restore_files_per_s"] = args.files / r["restore_s"]
        ref = results["boto3_upload_file_loop"]
        report = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "files": args.files, "bytes": total, "results": results,
            "ratio_vs_boto3_loop": {name: {"backup": ref["backup_s"] / r["backup_s"],
                                           "restore": ref["restore_s"] / r["restore_s"]}
                                    for name, r in results.items() if name != "boto3_upload_file_loop"},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
    finally:
        s3.server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
