"""Property-based tests (hypothesis) of the parsers users feed text to: locations, ``--set`` overrides and
config coercion, multimodal manifests, Modelfiles.

The property every parser shares: any input either parses or raises an aptops error (a ``ValueError`` /
``OSError`` subclass with a message); nothing else escapes. Round trips hold where the format has one.

How many examples and which: the hypothesis profile (``tests/conftest.py``). ``make test`` runs the
derandomized ``ci`` profile, the same examples every run, plus the ``@example`` cases that once found a bug;
``make fuzz`` draws many fresh random ones to look for new bugs (pin what it finds here as an ``@example``).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aptops.core.config import from_dict, parse_overrides
from aptops.core.errors import AptopsError
from aptops.core.locations import parse_location

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BUCKET = st.from_regex(r"[a-z0-9][a-z0-9-]{1,30}[a-z0-9]", fullmatch=True)  # valid for S3 and OSS alike
KEY = st.lists(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True).filter(lambda p: p not in (".", "..")),
               max_size=4).map("/".join)


@SETTINGS
@given(st.text(max_size=80))
def test_any_location_text_parses_or_fails_clearly(text):
    try:
        loc = parse_location(text)
    except AptopsError as exc:
        assert str(exc)
    else:
        assert loc.scheme in ("file", "s3", "oss", "hf", "modelscope")


@SETTINGS
@given(st.sampled_from(["s3", "oss"]), BUCKET, KEY)
def test_bucket_uris_round_trip(scheme, bucket, key):
    loc = parse_location(f"{scheme}://{bucket}/{key}" if key else f"{scheme}://{bucket}")
    assert (loc.scheme, loc.bucket, loc.key.strip("/")) == (scheme, bucket, key.strip("/"))


@dataclass(frozen=True)
class Sample:
    count: int = 1
    ratio: float = 0.5
    name: str = "x"
    flag: bool = False
    items: tuple[str, ...] = ()


@SETTINGS
@given(st.lists(st.text(alphabet=string.printable, max_size=30), max_size=5))
def test_overrides_parse_or_name_the_bad_pair(pairs):
    try:
        parsed = parse_overrides(pairs)
    except AptopsError as exc:
        assert "key=value" in str(exc)
    else:
        assert all("=" in p for p in pairs) and len(parsed) <= len(pairs)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["count", "ratio", "name", "flag", "items", "nope"]),
                       st.one_of(st.text(max_size=12), st.integers(), st.floats(allow_nan=True), st.booleans(),
                                 st.lists(st.text(max_size=5), max_size=3)), max_size=5))
@example(data={"items": "\x08"})  # PyYAML's reader refused it while the loader was made, outside the error handling
def test_config_coercion_accepts_or_refuses_every_value(data):
    try:
        cfg = from_dict(Sample, data)
    except AptopsError as exc:
        assert str(exc)
    else:
        assert isinstance(cfg.count, int) and isinstance(cfg.ratio, float) and isinstance(cfg.items, tuple)


ROW = st.fixed_dictionaries({}, optional={
    "text": st.one_of(st.none(), st.text(max_size=20)), "image": st.one_of(st.none(), st.text(max_size=10)),
    "audio": st.one_of(st.none(), st.text(max_size=10)), "label": st.one_of(st.none(), st.text(max_size=5),
                                                                             st.integers()),
    "start": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4)),
    "end": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))})


@SETTINGS
@given(st.lists(st.one_of(ROW.map(json.dumps), st.text(max_size=30)), max_size=6))
@example(lines=['{"image": "\\u0000"}'])  # a NUL byte in a media path: Path.resolve raised a raw ValueError
def test_manifests_load_or_name_the_bad_row(tmp_path_factory, lines):
    from aptops.multimodal.data import load_manifest

    path = tmp_path_factory.mktemp("m") / "m.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n", encoding="utf-8")
    try:
        rows = load_manifest(path)
    except AptopsError as exc:
        assert "m.jsonl" in str(exc) or "row" in str(exc) or "start" in str(exc)
    else:
        assert rows and all(r.text is not None or r.image is not None or r.audio is not None for r in rows)


@SETTINGS
@given(template=st.text(max_size=60), system=st.one_of(st.none(), st.text(max_size=30)),
       stop=st.lists(st.text(min_size=1, max_size=8), max_size=3))
def test_modelfiles_round_trip_or_refuse(tmp_path_factory, template, system, stop):
    from aptops.export.ollama import create_modelfile, parse_modelfile
    from tests.models import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path_factory.mktemp("mf") / "m.gguf")
    try:
        path = create_modelfile("model", gguf, template=template or None, system_prompt=system,
                                parameters={"stop": stop} if stop else None)
    except AptopsError as exc:
        assert str(exc)
        return
    parsed = parse_modelfile(path)
    assert Path(parsed["from"]).name == "m.gguf"
    if template:
        assert parsed["template"] == template
    if system:
        assert parsed["system"] == system
    if stop:
        assert parsed["parameters"]["stop"] == stop


@pytest.mark.parametrize("bad", ["s3:/x", "ftp://h/x", "s3://", "hf://only-one-part", "oss://B/Upper"])
def test_known_bad_locations_are_named(bad):
    with pytest.raises(AptopsError):
        parse_location(bad)


# --- data readers: whatever bytes a file holds, reading it gives rows of text or an aptops error ---------------

def _valid_bytes(fmt: str) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "alpha beta", "n": 1}, {"text": "gamma, \"delta\"\nepsilon", "n": 2}, {"text": "ζήτα 中文", "n": 3}]
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        return sink.getvalue()
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        return ("text" + sep + "n\n" + "".join(json.dumps(r["text"], ensure_ascii=False) + sep + str(r["n"]) + "\n"
                                               for r in rows)).encode()
    return "\n".join(r["text"] for r in rows).encode()


@st.composite
def _damaged(draw, fmt: str):
    """A valid file of the format, cut short, with bytes overwritten, or bytes inserted — or random bytes."""
    data = bytearray(_valid_bytes(fmt))
    kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    at = draw(st.integers(0, len(data)))
    if kind == "truncate":
        return bytes(data[:at])
    chunk = draw(st.binary(min_size=1, max_size=8))
    return bytes(data[:at] + chunk + data[at + (len(chunk) if kind == "overwrite" else 0):])


def _pinned(fmt: str) -> list[bytes]:
    """Inputs that once found a bug, run on every profile."""
    if fmt != "parquet":
        return []
    from tests.unit.data.damaged import parquet_with_undecodable

    # a schema name that is not UTF-8: pyarrow read the file, then `column_names` raised UnicodeDecodeError
    return [parquet_with_undecodable(where) for where in ("column_name", "nested_name", "value", "text_value")]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv", "tsv", "txt"])
def test_damaged_data_files_read_or_fail_clearly(fmt, tmp_path_factory):
    from aptops.data.io import read_batches

    folder = tmp_path_factory.mktemp(fmt)

    def check(data):
        path = folder / f"input.{fmt}"
        path.write_bytes(data)
        try:
            tables = list(read_batches(path))
        except AptopsError as exc:
            assert str(path) in str(exc) or "text" in str(exc)
        else:
            for t in tables:
                assert all(v is None or isinstance(v, str) for v in t.column("text").to_pylist())
                assert t.to_pylist() is not None and t.column_names  # every name and value decodes

    check = SETTINGS(given(_damaged(fmt))(check))
    for data in _pinned(fmt):
        check = example(data)(check)
    check()


def test_damaged_gguf_files_read_or_fail_clearly(tmp_path_factory):
    from aptops.core.errors import InvalidArtifactError
    from aptops.lm.gguf import read_gguf
    from tests.models import write_tiny_gguf

    folder = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(folder / "valid.gguf")
    valid = (folder / "valid.gguf").read_bytes()
    assert len(read_gguf(folder / "valid.gguf").tensors) == 2

    @SETTINGS
    @given(st.integers(0, len(valid)), st.binary(min_size=0, max_size=8), st.booleans())
    def check(at, chunk, cut):
        data = valid[:at] if cut else valid[:at] + chunk + valid[at + len(chunk):]
        path = folder / "damaged.gguf"
        path.write_bytes(data)
        try:
            reader = read_gguf(path)
        except InvalidArtifactError as exc:
            assert "not a readable GGUF file" in str(exc)
        else:
            assert len(reader.tensors) <= 2

    check()
