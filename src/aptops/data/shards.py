"""Near-duplicate removal across the shards of a dataset, in three steps that each fit a KFP task.

1. :func:`shard_signatures` (one task per shard): shingle hashes and LSH band keys -> Parquet.
2. :func:`cluster_duplicates` (one task): band by band, read one band's keys from every shard, collect
   candidate pairs, verify them by exact Jaccard (loading only the candidates' shingles), union-find,
   write the documents to drop.
3. :func:`filter_shard` (one task per shard): write the shard without the dropped rows.

Memory holds one band of keys (8 bytes a document) plus the candidates' shingles, never the corpus.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aptops.core.artifacts import (
    StageResult,
    atomic_output,
    finish_artifact,
    read_json,
    require_complete,
    write_json,
)
from aptops.core.deps import require
from aptops.core.errors import InvalidArtifactError
from aptops.core.logging import progress
from aptops.data.dedup import (
    DedupConfig,
    MinHasher,
    _verify,
    band_keys,
    candidate_pairs,
    config_fingerprint,
    exact_duplicate_pairs,
    hash_batch,
)

log = logging.getLogger(__name__)

SIGNATURES = "signatures.parquet"
DUPLICATES = "duplicates.parquet"
_ID_BITS = 40  # global id = shard << 40 | row: a million shards of a trillion rows


def _pa() -> tuple[Any, Any]:
    pa = require("pyarrow", extra="data", feature="sharded deduplication")
    pq = require("pyarrow.parquet", extra="data", feature="sharded deduplication")
    return pa, pq


def dataset_shards(dataset_dir: str | Path) -> list[str]:
    """The shard file names of a complete dataset artifact, in order."""
    folder = require_complete(dataset_dir, what="dataset")
    shards = sorted(p.name for p in Path(folder).glob("part-*.parquet"))
    if not shards:
        raise InvalidArtifactError(f"dataset {str(folder)!r} holds no part-*.parquet shards", path=str(folder))
    return shards


def shard_signatures(
    shard_path: str | Path, output_dir: str | Path, config: DedupConfig, *, shard_index: int, batch_rows: int = 2048
) -> StageResult:
    """Step 1: band keys, shingle hashes and exact hashes of every row of one shard."""
    pa, pq = _pa()
    np = require("numpy", extra="data", feature="sharded deduplication")
    bands, rows = config.band_rows
    hasher = MinHasher(bands * rows, config.seed)  # the permutations the bands use
    parquet = pq.ParquetFile(shard_path)
    if config.text_column not in parquet.schema_arrow.names:
        raise InvalidArtifactError(
            f"shard {str(shard_path)!r} has no column {config.text_column!r}", path=str(shard_path)
        )
    with atomic_output(output_dir) as tmp:
        writer = None
        row = 0
        for batch in progress(parquet.iter_batches(batch_size=batch_rows, columns=[config.text_column]),
                              desc=f"signatures shard {shard_index}", unit="batch", log_every=10):
            texts = [t or "" for t in batch.column(0).to_pylist()]
            hashed = hash_batch(texts, config)
            shingles = [hashed.shingles(i) for i in range(len(hashed))]
            keys = band_keys(hasher.signatures(hashed), bands, rows)
            ids = (np.uint64(shard_index) << np.uint64(_ID_BITS)) + np.arange(row, row + len(texts), dtype=np.uint64)
            table = pa.table({
                "id": pa.array(ids, type=pa.uint64()),
                "exact": pa.array(hashed.exact, type=pa.uint64()),
                "shingles": pa.array(shingles, type=pa.list_(pa.uint64())),
                **{f"band_{b}": pa.array(keys[:, b], type=pa.uint64()) for b in range(bands)},
            })
            if writer is None:
                writer = pq.ParquetWriter(tmp / SIGNATURES, table.schema, compression="zstd")
            writer.write_table(table)
            row += len(texts)
        if writer is not None:
            writer.close()
        result = StageResult("data", outputs={"signatures": str(output_dir)}, metrics={"rows": float(row)},
                             details={"shard_index": shard_index, "fingerprint": config_fingerprint(config)})
        finish_artifact(tmp, result, config)
    return result


def cluster_duplicates(signature_dirs: Sequence[str | Path], output_dir: str | Path, config: DedupConfig) -> StageResult:
    """Step 2: verified duplicate clusters across all shards; writes the ids to drop."""
    pa, pq = _pa()
    np = require("numpy", extra="data", feature="sharded deduplication")
    bands, _ = config.band_rows
    files = []
    for folder in signature_dirs:
        require_complete(folder, what="signatures")
        fp = read_json(Path(folder) / "result.json")["details"]["fingerprint"]
        if fp != config_fingerprint(config):
            raise InvalidArtifactError(
                f"signatures in {str(folder)!r} were made with other dedup settings; recompute them", path=str(folder)
            )
        if (Path(folder) / SIGNATURES).exists():
            files.append(Path(folder) / SIGNATURES)
    ids = np.concatenate([pq.read_table(f, columns=["id"]).column(0).to_numpy() for f in files]) if files else np.zeros(0, np.uint64)
    candidates: set[tuple[int, int]] = set()
    for band in progress(range(bands), desc="lsh bands", unit="band", log_every=5):
        keys = np.concatenate([pq.read_table(f, columns=[f"band_{band}"]).column(0).to_numpy() for f in files]) if files else ids
        candidates |= candidate_pairs(keys)
    exact = np.concatenate([pq.read_table(f, columns=["exact"]).column(0).to_numpy() for f in files]) if files else ids
    # exact duplicates by normalised hash join their clusters even when too short to shingle
    exact_pairs = exact_duplicate_pairs(exact)
    candidates |= set(exact_pairs)
    needed = sorted({i for pair in candidates for i in pair})
    shingles = _load_shingles(files, ids, needed)
    result = _verify(candidates, lambda i: shingles[i], config.threshold, exact_pairs=exact_pairs)
    clusters = result.clusters
    drop = sorted(m for root, members in clusters.items() for m in members if m != root)
    keep_of = {m: root for root, members in clusters.items() for m in members if m != root}
    with atomic_output(output_dir) as tmp:
        pq.write_table(pa.table({
            "id": pa.array(ids[drop] if drop else np.zeros(0, np.uint64), type=pa.uint64()),
            "duplicate_of": pa.array(ids[[keep_of[d] for d in drop]] if drop else np.zeros(0, np.uint64), type=pa.uint64()),
        }), tmp / DUPLICATES)
        metrics = {
            "documents": float(len(ids)), "candidate_pairs": float(len(candidates)),
            "verified_pairs": float(len(result.pairs)), "clusters": float(len(clusters)),
            "duplicates_removed": float(len(drop)),
        }
        write_json(tmp / "stats.json", metrics)
        out = StageResult("data", outputs={"duplicates": str(output_dir)}, metrics=metrics)
        finish_artifact(tmp, out, config)
    return out


def _load_shingles(files: Sequence[Path], ids: Any, needed: Sequence[int]) -> dict[int, Any]:
    """Shingle arrays of the needed documents (positions in ``ids``), read file by file."""
    _, pq = _pa()
    np = require("numpy", extra="data", feature="sharded deduplication")
    out: dict[int, Any] = {}
    if not needed:
        return out
    needed_arr = np.asarray(needed)
    offset = 0
    for f in files:
        n = pq.ParquetFile(f).metadata.num_rows
        local = needed_arr[(needed_arr >= offset) & (needed_arr < offset + n)] - offset
        if len(local):
            column = pq.read_table(f, columns=["shingles"]).column(0)
            for i in local.tolist():
                out[offset + i] = np.asarray(column[i].values, dtype=np.uint64)
        offset += n
    return out


def filter_shard(
    shard_path: str | Path, duplicates_dir: str | Path, output_path: str | Path, *, shard_index: int
) -> StageResult:
    """Step 3: copy one shard without its duplicate rows (atomically, to ``output_path``)."""
    pa, pq = _pa()
    np = require("numpy", extra="data", feature="sharded deduplication")
    require_complete(duplicates_dir, what="duplicates")
    dup = pq.read_table(Path(duplicates_dir) / DUPLICATES, columns=["id"]).column(0).to_numpy()
    base = np.uint64(shard_index) << np.uint64(_ID_BITS)
    mine = (dup[(dup >> np.uint64(_ID_BITS)) == np.uint64(shard_index)] - base).astype(np.int64)
    table = pq.read_table(shard_path)
    mask = np.ones(table.num_rows, dtype=bool)
    mask[mine] = False
    kept = table.filter(pa.array(mask))
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.tmp")
    pq.write_table(kept, tmp, compression="zstd")
    tmp.replace(output_path)
    return StageResult("data", outputs={"shard": str(output_path)},
                       metrics={"rows_in": float(table.num_rows), "rows_out": float(kept.num_rows)})


def shard_index(name: str) -> int:
    """The index of a shard from its file name (``part-00007.parquet`` -> 7)."""
    stem = Path(name).name
    if not (stem.startswith("part-") and stem.endswith(".parquet") and stem[5:-8].isdigit()):
        raise InvalidArtifactError(f"{name!r} is not a dataset shard name (part-NNNNN.parquet)", path=name)
    return int(stem[5:-8])


def merge_shards(shards: Sequence[tuple[str, str | Path]], output_dir: str | Path, *, source: str = "") -> StageResult:
    """Gather filtered shard files ``(shard name, path)`` into one dataset artifact, in shard order."""
    import shutil

    _, pq = _pa()
    rows = 0
    ordered = sorted(shards, key=lambda item: shard_index(item[0]))
    with atomic_output(output_dir) as tmp:
        for name, path in ordered:
            shutil.copyfile(path, tmp / name)
            rows += pq.ParquetFile(tmp / name).metadata.num_rows
        metrics = {"rows": float(rows), "shards": float(len(ordered))}
        write_json(tmp / "stats.json", {"stage": "data", "step": "merge", "source": source, **metrics})
        result = StageResult("data", outputs={"dataset": str(output_dir)}, metrics=metrics,
                             details={"shards": [n for n, _ in ordered]})
        finish_artifact(tmp, result)
    return result
