"""Reading text corpora in the usual formats, from local paths or URIs (the toolkit's reader: the data stage
cleans what it yields, the training stages build their datasets from it).

Inputs: JSONL, Parquet, CSV, plain text (one document per line, or per record separated by a line that matches
``separator``), a Hugging Face dataset saved with ``save_to_disk``, or a folder of such files; or a URI of a file,
a prefix or a glob read in place (:mod:`aptops.core.remote`). Text that is not UTF-8 (GBK, Big5, Latin-1 ...) is
detected and decoded, with a warning. Parquet is read a row group at a time, other files one at a time.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aptops.core.deps import require
from aptops.core.errors import AptopsError, ArtifactNotFoundError, ConfigError, InvalidArtifactError
from aptops.core.remote import is_uri, list_remote_files

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "parquet", "csv", "text", "hf")
_SUFFIX_FORMAT = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "csv",
    ".txt": "text", ".text": "text", "": "text",
}


def _pa() -> Any:
    return require("pyarrow", extra="data", feature="reading and writing datasets")


def detect_format(path: Path) -> str:
    """The format of one file, from its suffix; unknown suffixes are read as text."""
    return _SUFFIX_FORMAT.get(path.suffix.lower(), "text")


def is_hf_dataset_dir(path: Path) -> bool:
    """A folder written by ``datasets.Dataset.save_to_disk`` (Arrow stream files + state.json)."""
    return path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def list_input_files(source: Path) -> list[Path]:
    """The data files of ``source`` (a file, or a folder searched recursively, hidden files skipped)."""
    if not source.exists():
        raise ArtifactNotFoundError(
            f"input {str(source)!r} does not exist: pass a file or a folder of JSONL, Parquet, CSV or text files",
            path=str(source),
        )
    if source.is_file() or is_hf_dataset_dir(source):
        return [source]
    files: list[Path] = []
    skipped: list[str] = []
    seen: set[Path] = set()
    for p in sorted(source.rglob("*")):
        if (
            not p.is_file()
            or any(part.startswith(".") for part in p.relative_to(source).parts)
            or p.name in {"stats.json", "result.json", "config.json", "aptops.json"}
        ):
            continue
        real = p.resolve()
        if real in seen:  # a symlink to a file already listed (fortune's *.u8 links, say)
            continue
        seen.add(real)
        if detect_format(p) == "text" and _looks_binary(p):
            skipped.append(p.name)
            continue
        files.append(p)
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.warning("skipped %d binary files in %s: %s", len(skipped), source, shown)
    if not files:
        raise ArtifactNotFoundError(f"input folder {str(source)!r} holds no data files", path=str(source))
    return files


def _looks_binary(path: Path) -> bool:
    with path.open("rb") as fh:
        return b"\x00" in fh.read(8192)


#: The deepest nesting of a JSON row (objects and lists) read by default: a text corpus nests a few levels; a
#: row 10,000 levels deep drove pyarrow's reader to 7 GB and a segfault.
MAX_DEPTH = 64
#: The largest single field (a JSONL line, a CSV field, a text record) read by default, in MiB.
MAX_FIELD_MB = 64


def read_batches(
    source: str | Path,
    *,
    text_column: str = "text",
    input_format: str = "auto",
    separator: str | None = None,
    batch_rows: int = 10_000,
    max_depth: int = MAX_DEPTH,
    max_field_mb: int = MAX_FIELD_MB,
) -> Iterator[pa.Table]:
    """Yield tables of at most ``batch_rows`` rows with at least a string ``text_column``.

    Args:
        source: a file or a folder of files, or a URI of one, a prefix or a glob (``s3://bucket/corpus/``,
            ``hf://datasets/org/name/data/*.parquet``; :mod:`aptops.core.remote`), read in place file by file.
        text_column: the column holding the text (for text files, the name given to each line).
        input_format: one of ``auto``, ``jsonl``, ``parquet``, ``csv``, ``text``.
        separator: for text files, a regex that matches a whole separator line between records
            (``%`` for fortune files); ``None`` means one record per non-empty line.
        batch_rows: the largest table yielded.
        max_depth: the deepest nesting of objects and lists a JSON row may have.
        max_field_mb: the largest JSONL line, CSV field or text record, in MiB.

    Raises:
        ArtifactNotFoundError: the input does not exist.
        InvalidArtifactError: a file cannot be parsed, lacks ``text_column``, or is over a limit (the message
            names the file, the row and the limit).
    """
    limits = (max_depth, max_field_mb * 1024 * 1024)
    if input_format not in FORMATS:
        raise ConfigError(f"input_format={input_format!r} is not supported: choose one of {', '.join(FORMATS)}",
                          field="input_format", value=input_format)
    files: list[Any] = list_remote_files(str(source)) if is_uri(source) else list_input_files(Path(source))
    for path in files:
        local = isinstance(path, Path)
        fmt = (("hf" if local and is_hf_dataset_dir(path) else detect_format(path)) if input_format == "auto"
               else input_format)
        if fmt == "parquet":  # a row group at a time: memory stays flat in the file's size
            tables: Iterator[pa.Table] = _parquet_batches(path, batch_rows)
        elif fmt in ("jsonl", "text"):  # a block of whole lines at a time, likewise
            tables = _line_file_batches(path, fmt, text_column, separator, limits)
        elif fmt == "csv":  # pyarrow's streaming reader, a block at a time, when the file is UTF-8
            tables = _csv_batches(path, text_column, separator, limits)
        else:  # a save_to_disk folder
            tables = iter([_read_file(path, fmt, text_column, separator, limits)])
        for whole in tables:
            table = _checked(_decodable(whole, path), path, text_column)
            for offset in range(0, table.num_rows, batch_rows):
                yield table.slice(offset, batch_rows)


def _checked(table: pa.Table, path: Any, text_column: str) -> pa.Table:
    pa = _pa()
    if text_column not in table.column_names:
        raise InvalidArtifactError(
            f"{str(path)!r} has no column {text_column!r} (columns: {', '.join(table.column_names) or 'none'}): "
            "pass text_column=<name of the text column>",
            path=str(path),
        )
    col = table.column(text_column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
        raise InvalidArtifactError(
            f"{str(path)!r}: column {text_column!r} holds {col.type}, not text", path=str(path)
        )
    return table


def _parquet_batches(path: Any, batch_rows: int) -> Iterator[pa.Table]:
    """A Parquet file (local, or a remote file read through its file system) as tables of at most ``batch_rows``."""
    pa = _pa()
    pq = require("pyarrow.parquet", extra="data", feature="reading Parquet")
    try:
        reader = pq.ParquetFile(path if isinstance(path, Path) else path.open())
        if reader.metadata.num_rows == 0:
            yield reader.schema_arrow.empty_table()
            return
        for batch in reader.iter_batches(batch_size=batch_rows):
            yield pa.Table.from_batches([batch])
    except AptopsError:
        raise
    except (pa.ArrowException, OSError, UnicodeError) as exc:
        if isinstance(exc, UnicodeError):  # a name or value that is not UTF-8: the whole-table check says which
            _decodable(pq.read_table(path if isinstance(path, Path) else path.open()), path)
        raise InvalidArtifactError(
            f"{str(path)!r} could not be read as parquet: {exc}; check the file or pass input_format=", path=str(path)
        ) from exc


#: Bytes of a JSONL or text file parsed at once: a file bigger than this is read block by block.
BLOCK_BYTES = 64 << 20


def _line_blocks(path: Any, max_line: int, block: int) -> Iterator[bytes]:
    """The bytes of ``path`` in blocks of about ``block`` bytes that end at a line break (the last at the end), so
    no line is split; a line longer than ``max_line`` is refused as soon as that much of it has been read."""
    with (path.open("rb") if isinstance(path, Path) else path.open()) as fh:
        carry = b""
        while chunk := fh.read(block):
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if len(data) > max_line:
                    raise InvalidArtifactError(f"{str(path)!r}: a line is over {_mib(len(data))} long, over the "
                                               f"{_mib(max_line)} line limit; raise max_field_mb if it is meant",
                                               path=str(path))
                carry = data
                continue
            yield data[:cut]
            carry = data[cut:]
        if carry:
            yield carry


def _line_file_batches(path: Any, fmt: str, text_column: str, separator: str | None, limits: tuple[int, int],
                       *, block: int | None = None) -> Iterator[pa.Table]:
    """A JSONL or text file as tables, one block of whole lines at a time: memory stays flat in the file's size.
    The encoding is settled on the first block (UTF-8, else detected) and kept; a text record that spans blocks
    (``separator`` records) is carried over whole."""
    pa = _pa()
    max_field = limits[1]
    encoding: str | None = None
    row = 0
    row_seen = False
    pending: list[str] = []  # the lines of a separator record not yet closed
    try:
        for data in _line_blocks(path, max_field + 1, block or BLOCK_BYTES):
            if encoding is None:
                raw, encoding = _decode(data, path)
            else:
                try:
                    raw = data.decode(encoding)
                except UnicodeDecodeError as exc:
                    raise InvalidArtifactError(f"{str(path)!r} changes encoding part-way (it read as {encoding} "
                                               f"until byte {exc.start} of a block): convert it to UTF-8",
                                               path=str(path)) from None
            if fmt == "jsonl":
                if not raw.strip():
                    continue
                longest = _check_json_lines(raw, path, limits[0], max_field, first_row=row)
                row += raw.count("\n")
                json_mod = require("pyarrow.json", extra="data", feature="reading JSONL")
                options = json_mod.ReadOptions(block_size=max(1 << 20, 2 * longest + 1024))
                yield json_mod.read_json(pa.BufferReader(raw.encode("utf-8")), read_options=options)
                row_seen = True
                continue
            records, pending = _text_records_from(pending + raw.splitlines(), separator, final=False)
            _check_records(records, path, max_field)
            if records:
                row_seen = True
                yield pa.table({text_column: records})
        records, _ = _text_records_from(pending, separator, final=True)
        _check_records(records, path, max_field)
        if records or (fmt == "text" and not row_seen):  # an empty text file: an empty table, as a whole read gave
            yield pa.table({text_column: pa.array(records, pa.string())})
        elif fmt == "jsonl" and not row_seen:
            raise InvalidArtifactError(f"{str(path)!r} could not be read as jsonl: it holds no rows; check the file "
                                       "or pass input_format=", path=str(path))
    except AptopsError:
        raise
    except (pa.ArrowException, OSError, UnicodeError) as exc:
        raise _unreadable(path, fmt, exc) from exc


def _unreadable(path: Any, fmt: str, exc: BaseException) -> InvalidArtifactError:
    return InvalidArtifactError(f"{str(path)!r} could not be read as {fmt}: {exc}; check the file or pass input_format=",
                                path=str(path))


def _csv_batches(path: Any, text_column: str, separator: str | None, limits: tuple[int, int]) -> Iterator[pa.Table]:
    """A CSV file block by block through pyarrow's streaming reader (a block holds every field whole: twice the field
    limit), when it is UTF-8; a file in another encoding, found so at any block, is decoded whole as before (the
    detection needs all of it)."""
    pa = _pa()
    csv = require("pyarrow.csv", extra="data", feature="reading CSV")
    max_field = limits[1]
    parse = csv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",", newlines_in_values=True)
    options = csv.ReadOptions(block_size=max(1 << 20, 2 * max_field + 1024))
    convert = csv.ConvertOptions(check_utf8=True)
    emitted = 0
    try:
        with (path.open("rb") if isinstance(path, Path) else path.open()) as raw:
            head = raw.read(3)
            if head != b"\xef\xbb\xbf":  # a UTF-8 byte order mark is skipped, anything else read
                raw.seek(0)
            reader = csv.open_csv(raw, read_options=options, parse_options=parse, convert_options=convert)
            if any(pa.types.is_binary(t) or pa.types.is_large_binary(t) for t in reader.schema.types):
                raise UnicodeError("invalid UTF8 in the first block")  # pyarrow types such text binary
            for batch in reader:
                table = pa.Table.from_batches([batch])
                _check_field_sizes(table, path, max_field)
                emitted += 1
                yield table
        if not emitted:  # a header alone: an empty table with its columns, as a whole read gives
            yield _read_file(path, "csv", text_column, separator, limits)
    except AptopsError:
        raise
    except (pa.ArrowException, OSError, UnicodeError) as exc:
        utf8 = "UTF8" in str(exc).upper().replace("-", "")
        if emitted and utf8:
            raise InvalidArtifactError(f"{str(path)!r} is UTF-8 in its first blocks and not after ({exc}): convert it "
                                       "to one encoding, UTF-8", path=str(path)) from exc
        if not utf8:
            raise _unreadable(path, "csv", exc) from exc
        yield _read_file(path, "csv", text_column, separator, limits)  # not UTF-8: detected and decoded whole


def _check_records(records: list[str], path: Any, max_field: int) -> None:
    for i, record in enumerate(records):
        if len(record) > max_field:
            raise InvalidArtifactError(f"{str(path)!r}: record {i} is {_mib(len(record))} long, over the "
                                       f"{_mib(max_field)} field limit; raise max_field_mb if it is meant",
                                       path=str(path))


def _read_file(path: Path, fmt: str, text_column: str, separator: str | None, limits: tuple[int, int]) -> pa.Table:
    """A file read whole: a ``save_to_disk`` folder (``hf``), or a CSV that is not UTF-8 (decoded whole, the detection
    needs all of it). Parquet, JSONL, text and UTF-8 CSV are read in blocks by :func:`read_batches`."""
    pa = _pa()
    max_field = limits[1]
    try:
        if fmt == "hf":
            return _read_hf_dataset(path)
        data = decode_bytes(path.read_bytes(), path).encode("utf-8")
        csv = require("pyarrow.csv", extra="data", feature="reading CSV")
        parse = csv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",", newlines_in_values=True)
        # one block per file up to the field limit: a field (quoted newlines included) never straddles two
        options = csv.ReadOptions(block_size=max(1 << 20, min(len(data) + 1, 2 * max_field + 1024)))
        table = csv.read_csv(pa.BufferReader(data), parse_options=parse, read_options=options)
        _check_field_sizes(table, path, max_field)
        return table
    except AptopsError:
        raise
    # ArrowInvalid; ArrowIOError (an OSError) for cut-off files; UnicodeError where a reader decodes a name
    except (pa.ArrowException, OSError, UnicodeError) as exc:
        raise _unreadable(path, fmt, exc) from exc


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _check_json_lines(raw: str, path: Path, max_depth: int, max_field: int, *, first_row: int = 0) -> int:
    """Refuse a JSONL row longer than ``max_field`` or nested deeper than ``max_depth`` before pyarrow parses
    it; returns the longest line's length. A line's depth is only worked out when it has more brackets than
    ``max_depth`` (strings removed first), so ordinary rows cost one count."""
    longest = 0
    for i, line in enumerate(raw.split("\n"), start=first_row):
        size = len(line)
        longest = max(longest, size)
        if size > max_field:
            raise InvalidArtifactError(f"{str(path)!r}: row {i} is {_mib(size)} long, over the {_mib(max_field)} "
                                       "line limit; raise max_field_mb if it is meant", path=str(path))
        if line.count("{") + line.count("[") <= max_depth:
            continue
        brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", line))
        depth = deepest = 0
        for ch in brackets:
            depth += 1 if ch in "[{" else -1
            if depth > deepest:
                deepest = depth
                if deepest > max_depth:
                    raise InvalidArtifactError(f"{str(path)!r}: row {i} nests objects or lists deeper than "
                                               f"{max_depth} levels; flatten it or raise max_depth",
                                               path=str(path))
    return longest


def _check_field_sizes(table: pa.Table, path: Path, max_field: int) -> None:
    pa = _pa()
    pc = require("pyarrow.compute", extra="data", feature="reading CSV")
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) or len(column) == 0:
            continue
        lengths = pc.binary_length(column)
        biggest = pc.max(lengths).as_py() or 0
        if biggest > max_field:
            row = pc.index(lengths, biggest).as_py()
            raise InvalidArtifactError(f"{str(path)!r}: row {row}, column {name!r} is {_mib(biggest)} long, over the "
                                       f"{_mib(max_field)} field limit; raise max_field_mb if it is meant",
                                       path=str(path))


def _decodable(table: pa.Table, path: Path) -> pa.Table:
    """``table`` with every column name and string value checked to be UTF-8, and without the file's metadata.

    Parquet and Arrow readers check neither names nor values; Python raises a bare ``UnicodeDecodeError`` the
    first time a later step asks for ``column_names`` or a value. The file's own metadata (pandas index
    descriptions, writer notes) means nothing to the dataset artifact and is dropped rather than checked.
    """
    pa = _pa()

    def check_names(field: pa.Field, where: str) -> None:
        try:
            name = field.name
        except UnicodeDecodeError as exc:
            raise InvalidArtifactError(
                f"{str(path)!r}: the name of {where} is not valid UTF-8 ({exc.object[:40]!r}); rename the column "
                "and write the file again", path=str(path)) from exc
        for j in range(field.type.num_fields):  # struct members, list items, map keys and values
            check_names(field.type.field(j), f"a field inside column {name!r}")

    for i in range(table.num_columns):
        check_names(table.schema.field(i), f"column {i}")
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:  # a string that is not UTF-8, or offsets pointing outside the data
            raise InvalidArtifactError(f"{str(path)!r}: column {name!r} is damaged ({exc}); write the file again",
                                       path=str(path)) from exc
    return table.replace_schema_metadata(None)


def _read_hf_dataset(path: Path) -> pa.Table:
    """The Arrow files of a ``save_to_disk`` folder, read directly (no ``datasets`` import needed)."""
    pa = _pa()
    ipc = require("pyarrow.ipc", extra="data", feature="reading Hugging Face datasets on disk")
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        files = [path / f["filename"] for f in state.get("_data_files", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not JSON, not UTF-8, or not the layout
        raise InvalidArtifactError(f"{str(path / 'state.json')!r} is not a datasets state file ({exc!r}): save the "
                                   "dataset again with Dataset.save_to_disk", path=str(path)) from exc
    if not files:
        raise InvalidArtifactError(f"{str(path)!r} lists no Arrow data files in state.json", path=str(path))
    return pa.concat_tables([ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files])


_CHINESE_ENCODINGS = ("gb18030", "gbk", "gb2312", "hz", "big5", "big5hkscs", "cp950")


def decode_bytes(data: bytes, path: Path) -> str:
    """UTF-8 text, or text repaired from another encoding (GBK, Big5, Latin-1 ...) when it is not UTF-8.

    Binary data (NUL bytes) is refused rather than decoded into garbage.
    """
    return _decode(data, path)[0]


def _decode(data: bytes, path: Any) -> tuple[str, str]:
    """:func:`decode_bytes`, and the encoding it read (``utf-8`` after the first block of a UTF-8 file)."""
    if b"\x00" in data[:8192]:
        raise InvalidArtifactError(
            f"{str(path)!r} looks binary (it holds NUL bytes), not text: pass a text, JSONL, CSV or Parquet file",
            path=str(path),
        )
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    charset_normalizer = require("charset_normalizer", extra="data", feature="encoding detection")
    matches = list(charset_normalizer.from_bytes(data))
    # Short Chinese texts are often equally plausible as Korean (cp949) to a detector; for the corpora this
    # stage sees, a Chinese reading wins when one is among the plausible ones.
    # Likewise Windows-1252 wins over its central-European siblings when both read the bytes.
    preferred = [m for m in matches if m.encoding in _CHINESE_ENCODINGS] or [m for m in matches if m.encoding == "cp1252"]
    best = preferred[0] if preferred else (matches[0] if matches else None)
    if best is None:
        raise InvalidArtifactError(
            f"{str(path)!r} is neither UTF-8 nor any text encoding that could be detected: convert it to UTF-8",
            path=str(path),
        )
    log.warning("%s is not UTF-8; decoded it as %s", path, best.encoding)
    return str(best), best.encoding


def _text_records_from(lines: list[str], separator: str | None, *, final: bool) -> tuple[list[str], list[str]]:
    """The records ``lines`` close (a non-empty line each, or what lies between ``separator`` lines), and the lines
    of the record still open (kept for the next block unless ``final``)."""
    if separator is None:
        return [line for line in lines if line.strip()], []
    try:
        sep = re.compile(separator)
    except re.error as exc:
        raise ConfigError(f"separator {separator!r} is not a valid regular expression: {exc}",
                          field="separator", value=separator) from exc
    records, current = [], []
    for line in lines:
        if sep.fullmatch(line):
            if current:
                records.append("\n".join(current))
            current = []
        else:
            current.append(line)
    if current and final:
        records.append("\n".join(current))
        current = []
    return [r for r in records if r.strip()], current
