"""Parquet files damaged in the ways pyarrow's reader lets through: bytes that are not UTF-8 where a name or
a string value should be. Built by writing a valid file and overwriting a marker of the same length (Parquet
stores names and values length-prefixed, so the file stays structurally valid)."""

from __future__ import annotations

import io

MARKER = b"zqzq"
NOT_UTF8 = b"\xff\xfe\xff\xfe"


def parquet_with_undecodable(where: str) -> bytes:
    """A Parquet file whose ``column_name``, ``nested_name``, ``value`` or ``text_value`` is not UTF-8."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    marker = MARKER.decode()
    table = {
        "column_name": pa.table({"text": ["alpha", "beta"], marker: [1, 2]}),
        "nested_name": pa.table({"text": ["alpha"], "meta": [{marker: 1}]}),
        "value": pa.table({"text": ["alpha"], "label": [marker]}),
        "text_value": pa.table({"text": [marker]}),
    }[where]
    sink = io.BytesIO()
    # no ARROW:schema copy of the schema in the footer, so the overwritten bytes are the only copy of the name
    pq.write_table(table, sink, store_schema=False, compression="none", use_dictionary=False)
    data = sink.getvalue()
    assert MARKER in data
    return data.replace(MARKER, NOT_UTF8)
