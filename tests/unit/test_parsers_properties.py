"""Property-based tests (hypothesis) of the parsers users feed text to: locations, ``--set`` overrides and
config coercion, multimodal manifests, Modelfiles.

The property every parser shares: any input either parses or raises an aptops error (a ``ValueError`` /
``OSError`` subclass with a message); nothing else escapes. Round trips hold where the format has one.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aptops.core.config import from_dict, parse_overrides
from aptops.core.errors import AptopsError
from aptops.core.locations import parse_location

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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

    folder = tmp_path_factory.mktemp("mf")
    gguf = folder / "m.gguf"
    gguf.write_bytes(b"GGUF")
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
