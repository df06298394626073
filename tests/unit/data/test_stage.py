from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aptops.core.artifacts import is_complete
from aptops.core.errors import ArtifactNotFoundError, ConfigError, InvalidArtifactError
from aptops.data import CleanConfig, StatsConfig, clean_dataset, dataset_stats
from aptops.data.io import read_dataset
from tests.unit.data.damaged import parquet_with_undecodable


def _rows(folder):
    return read_dataset(folder).column("text").to_pylist()


def test_jsonl_keeps_other_columns_and_drops_empty(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"text": "Hello  https://x.io world", "label": "a"},
        {"text": "   \u200b ", "label": "b"},
        {"text": "Mail me: a@b.com", "label": "c"},
    ]) + "\n")
    result = clean_dataset(src, output_dir=tmp_path / "out")
    table = read_dataset(tmp_path / "out")
    assert table.column("text").to_pylist() == ["Hello world", "Mail me:"]
    assert table.column("label").to_pylist() == ["a", "c"]
    assert result.metrics["rows_in"] == 3
    assert result.metrics["rows_out"] == 2
    assert result.metrics["urls_removed"] == 1
    assert result.metrics["emails_removed"] == 1
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["rows_dropped"] == 1


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_parquet_and_csv_with_custom_text_column(tmp_path, fmt):
    table = pa.table({"body": ["x\ty", "a  b"], "id": [1, 2]})
    src = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, src)
    else:
        src.write_text("body,id\n\"x\ty\",1\n\"a  b\",2\n")
    clean_dataset(src, output_dir=tmp_path / "out", config=CleanConfig(text_column="body"))
    assert read_dataset(tmp_path / "out").column("body").to_pylist() == ["x y", "a b"]


def test_text_records_with_separator_and_folder_input(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a").write_text("first\nrecord\n%\nsecond\n%\n")
    (folder / "b.txt").write_text("third\n%\n")
    (folder / "a.dat").write_bytes(b"\x00\x00\x00\x02binary index")
    (folder / "a.u8").symlink_to(folder / "a")
    clean_dataset(folder, output_dir=tmp_path / "out", config=CleanConfig(separator="%"))
    assert _rows(tmp_path / "out") == ["first\nrecord", "second", "third"]


def test_sharding(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(f"line {i}" for i in range(25)))
    result = clean_dataset(src, output_dir=tmp_path / "out", config=CleanConfig(shard_rows=10))
    assert result.details["shards"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert len(_rows(tmp_path / "out")) == 25


def test_stats_report(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a\nbb bb\nccc ccc ccc\nbb bb\n")
    clean_dataset(src, output_dir=tmp_path / "ds")
    result = dataset_stats(tmp_path / "ds", output_dir=tmp_path / "stats", config=StatsConfig(histogram_bins=3))
    assert result.metrics["rows"] == 4
    assert result.metrics["words_total"] == 1 + 2 + 3 + 2
    assert result.metrics["unique_ratio"] == 0.75
    assert result.metrics["chars_max"] == 11
    html = (tmp_path / "stats" / "report.html").read_text()
    assert "<svg" in html and "<rect" in html
    assert is_complete(tmp_path / "stats")


@pytest.mark.parametrize(
    ("content", "name", "kwargs", "error", "message"),
    [
        (None, "missing.jsonl", {}, ArtifactNotFoundError, "does not exist"),
        ('{"text": "a"}\n{"text": ', "trunc.jsonl", {}, InvalidArtifactError, "could not be read as jsonl"),
        ('{"body": "a"}\n', "cols.jsonl", {}, InvalidArtifactError, "has no column 'text'.*columns: body"),
        ('{"text": 5}\n', "num.jsonl", {}, InvalidArtifactError, "holds int64, not text"),
        (b"\x00\x01\x02", "bin.txt", {}, InvalidArtifactError, "looks binary"),
        ("   \n\t\n", "blank.txt", {"separator": "%"}, InvalidArtifactError, "nothing left after cleaning"),
        ("x\n", "bad-sep.txt", {"separator": "("}, ConfigError, "separator '\\(' is not a valid regular"),
    ],
)
def test_bad_inputs_fail_clearly_and_leave_nothing(tmp_path, content, name, kwargs, error, message):
    src = tmp_path / name
    if isinstance(content, bytes):
        src.write_bytes(content)
    elif content is not None:
        src.write_text(content)
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        clean_dataset(src, output_dir=out, config=CleanConfig(**kwargs))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize(("where", "message"), [
    ("column_name", r"the name of column 1 is not valid UTF-8 \(b'\\xff\\xfe"),
    ("nested_name", r"the name of a field inside column 'meta' is not valid UTF-8"),
    ("value", r"column 'label' is damaged \(.*Invalid UTF8"),
    ("text_value", r"column 'text' is damaged \(.*Invalid UTF8"),
])
def test_undecodable_parquet_names_and_values_fail_clearly(tmp_path, where, message):
    src = tmp_path / "in.parquet"
    src.write_bytes(parquet_with_undecodable(where))  # pyarrow reads these without complaint
    out = tmp_path / "out"
    with pytest.raises(InvalidArtifactError, match=message) as err:
        clean_dataset(src, output_dir=out)
    assert str(src) in str(err.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_input_metadata_is_not_carried_into_the_dataset(tmp_path):
    table = pa.table({"text": ["alpha beta"]}).replace_schema_metadata({b"pandas": b"\xff not json", b"k": b"v"})
    pq.write_table(table, tmp_path / "in.parquet")
    clean_dataset(tmp_path / "in.parquet", output_dir=tmp_path / "out")
    assert not any(k in (pq.read_schema(p).metadata or {}) for p in (tmp_path / "out").glob("part-*.parquet")
                   for k in (b"pandas", b"k"))


def test_stats_refuses_incomplete_dataset(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(ArtifactNotFoundError, match="incomplete"):
        dataset_stats(tmp_path / "ds", output_dir=tmp_path / "stats")


@pytest.mark.parametrize(
    ("text", "encoding", "name"),
    [
        ("今天天气很好，我们去公园散步吧。\n这是一个美好的周末，阳光明媚。", "gbk", "reviews.txt"),
        ("這本書很好看，推薦給大家。", "big5", "book.txt"),
        ("Le café était très crème brûlée, déjà vu à Noël", "cp1252", "fr.txt"),
        ('{"text": "中文评论内容很好"}', "gbk", "short.jsonl"),
    ],
)
def test_non_utf8_text_is_repaired(tmp_path, text, encoding, name):
    src = tmp_path / name
    src.write_bytes(text.encode(encoding))
    clean_dataset(src, output_dir=tmp_path / "out")
    got = _rows(tmp_path / "out")
    expected = [line for line in text.splitlines()] if not name.endswith(".jsonl") else ["中文评论内容很好"]
    assert got == expected


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["hello  world", "second https://x.io row"], "label": [0, 1]}).save_to_disk(
        str(tmp_path / "hf")
    )
    clean_dataset(tmp_path / "hf", output_dir=tmp_path / "out")
    assert read_dataset(tmp_path / "out").to_pylist() == [{"text": "hello world", "label": 0}, {"text": "second row", "label": 1}]


@pytest.mark.parametrize("state", [b"\xff\xfe", b"{not json", b'{"_data_files": [{"name": "x"}]}', b"[1]"])
def test_hf_dataset_with_a_broken_state_file_fails_clearly(tmp_path, state):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    (folder / "state.json").write_bytes(state)
    with pytest.raises(InvalidArtifactError, match=r"is not a datasets state file.*save_to_disk"):
        clean_dataset(folder, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_jsonl_is_a_clear_error(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(InvalidArtifactError, match="could not be read as jsonl"):
        clean_dataset(tmp_path / "e.jsonl", output_dir=tmp_path / "out")


def test_length_histogram_is_log_spaced():
    from aptops.data.recipe import _histogram

    hist = _histogram([1, 10, 100, 1000, 5], 3)
    assert [round(e) for e in hist["edges"]] == [1, 10, 100, 1000]
    assert hist["counts"] == [2.0, 1.0, 2.0]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("deep.jsonl", '{"text": "fine"}\n{"text": "x", "meta": ' + '{"a": ' * 10_000 + "1" + "}" * 10_000 + "}\n",
     r"row 1 nests objects or lists deeper than 64 levels"),
    ("deeplist.jsonl", '{"text": ' + "[" * 10_000 + "]" * 10_000 + "}\n", r"row 0 nests objects or lists deeper than 64"),
    ("shallowlist.jsonl", '{"text": [[[[1]]]]}\n', "column 'text' holds list<item: list<item: list<item: list<item: "
                                                  "int64>>>>, not text"),
])
def test_deeply_nested_json_is_refused_by_its_row_before_the_reader_sees_it(tmp_path, name, content, message):
    """Issue 25: one 10,000-level row drove `aptops data clean` to 6.97 GB and a segfault (exit 139)."""
    src = tmp_path / name
    src.write_text(content)
    with pytest.raises(InvalidArtifactError, match=message):
        clean_dataset(src, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "[{" * 500 + ' \\" ]] "'}) + "\n")
    assert clean_dataset(src, output_dir=tmp_path / "out").metrics["rows_out"] == 1


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "txt"])
def test_a_field_larger_than_the_reader_block_is_read_and_one_over_the_limit_is_refused(tmp_path, fmt):
    """Issue 25: a valid CSV with one 20 MB field was refused with "straddling object straddles two block
    boundaries"; 3 MiB is enough to straddle pyarrow's 1 MiB blocks."""
    big = "word " * (3 * 1024 * 1024 // 5)
    src = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        src.write_text(f'text,label\n"{big}\nmore",a\nsmall row,b\n')
    elif fmt == "jsonl":
        src.write_text(json.dumps({"text": big}) + "\n" + json.dumps({"text": "small row"}) + "\n")
    else:
        src.write_text(big + "\nsmall row\n")
    result = clean_dataset(src, output_dir=tmp_path / "out")
    assert result.metrics["rows_out"] == 2
    assert max(len(t) for t in read_dataset(tmp_path / "out").column("text").to_pylist()) > 3_000_000
    with pytest.raises(InvalidArtifactError, match=r"is 3.0 MiB long, over the 2.0 MiB .*limit; raise max_field_mb"):
        clean_dataset(src, output_dir=tmp_path / "refused", config=CleanConfig(max_field_mb=2))
    assert not (tmp_path / "refused").exists()
