"""The aptops dataset artifact: writing Parquet shards (``part-00000.parquet`` ...) plus ``stats.json``, with
``result.json`` marking it complete, and reading it back. Reading corpora in their usual formats, locally or at a
URI, is the toolkit's (:mod:`aptops.core.sources`), re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aptops.core.deps import require
from aptops.core.errors import InvalidArtifactError
from aptops.core.sources import (  # noqa: F401 - the data stage's reading API, as it always was
    FORMATS,
    MAX_DEPTH,
    MAX_FIELD_MB,
    decode_bytes,
    detect_format,
    is_hf_dataset_dir,
    list_input_files,
    read_batches,
)

if TYPE_CHECKING:
    import pyarrow as pa


def _pa() -> Any:
    return require("pyarrow", extra="data", feature="reading and writing datasets")


class ShardWriter:
    """Write tables into ``part-NNNNN.parquet`` shards of at most ``shard_rows`` rows each."""

    def __init__(self, folder: Path, *, shard_rows: int = 100_000) -> None:
        self.folder = folder
        self.shard_rows = shard_rows
        self.rows = 0
        self.shards: list[str] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.shard_rows:
            self._flush(self.shard_rows)

    def close(self) -> list[str]:
        if self._pending_rows:
            self._flush(self._pending_rows)
        return self.shards

    def _flush(self, rows: int) -> None:
        pa = _pa()
        pq = require("pyarrow.parquet", extra="data", feature="writing Parquet")
        table = pa.concat_tables(self._pending, promote_options="default").combine_chunks()
        head, tail = table.slice(0, rows), table.slice(rows)
        name = f"part-{len(self.shards):05d}.parquet"
        pq.write_table(head, self.folder / name, compression="zstd")
        self.shards.append(name)
        self.rows += head.num_rows
        self._pending = [tail] if tail.num_rows else []
        self._pending_rows = tail.num_rows


def dataset_rows(folder: str | Path) -> int:
    """Rows of a complete dataset artifact, from the Parquet footers (no data is read)."""
    from aptops.core.artifacts import require_complete

    folder = require_complete(folder, what="dataset")
    pq = require("pyarrow.parquet", extra="data", feature="reading datasets")
    return sum(pq.ParquetFile(s).metadata.num_rows for s in sorted(Path(folder).glob("part-*.parquet")))


def read_dataset(folder: str | Path) -> pa.Table:
    """Read a complete aptops dataset artifact into one table."""
    from aptops.core.artifacts import require_complete

    folder = require_complete(folder, what="dataset")
    pq = require("pyarrow.parquet", extra="data", feature="reading datasets")
    shards = sorted(Path(folder).glob("part-*.parquet"))
    if not shards:
        raise InvalidArtifactError(f"dataset {str(folder)!r} holds no part-*.parquet shards", path=str(folder))
    pa = _pa()
    return pa.concat_tables([pq.read_table(s) for s in shards], promote_options="default")
