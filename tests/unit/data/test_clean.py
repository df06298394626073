from __future__ import annotations

import pytest

from aptops.core.errors import ConfigError
from aptops.data import clean_text, clean_text_with_stats


def test_repairs_mojibake():
    # "café" encoded as UTF-8 and decoded as cp1252 (a classic broken export).
    broken = "café déjà vu".encode().decode("cp1252")
    assert broken != "café déjà vu"
    assert clean_text(broken) == "café déjà vu"


def test_removes_urls_and_emails_but_keeps_the_sentence():
    text = "See https://example.com/a?b=1, or www.test.org. Mail bob.smith+x@mail.example.co.uk now!"
    out, stats = clean_text_with_stats(text)
    assert out == "See , or . Mail now!"
    assert (stats.urls, stats.emails) == (2, 1)


def test_strips_control_and_invisible_characters():
    text = "a\x00b\x1bc\u200bd\ufeffe\u202eF\ue000g"
    out, stats = clean_text_with_stats(text)
    assert out == "abcdeFg"
    assert stats.control_chars == 6


def test_normalises_whitespace_keeps_paragraphs():
    text = "  one\t\ttwo\u00a0three  \r\n\r\n\r\n\n  four \u3000five  "
    assert clean_text(text) == "one two three\n\nfour five"


def test_nroff_overstrike_is_resolved():
    assert clean_text("_\bi_\bt is b\bbo\bol\bld\bd") == "it is bold"


def test_chinese_text_and_fullwidth_punctuation_survive_basic_cleaning():
    # basic must not fold CJK full-width punctuation to ASCII: that is the chinese strategy's decision.
    assert clean_text("今天天气很好，我们去公园吧！  联系 a@b.cn 。") == "今天天气很好，我们去公园吧！ 联系 。"


def test_custom_rules_apply_after_strategy():
    out, stats = clean_text_with_stats("call 555-1234 now", custom_rules=[(r"\d{3}-\d{4}", "<PHONE>")])
    assert out == "call <PHONE> now"
    assert stats.custom_rules == 1


def test_bad_inputs():
    with pytest.raises(ConfigError, match="strategy='aggresive' is not supported"):
        clean_text("x", strategy="aggresive")
    with pytest.raises(ConfigError, match="text must be a string"):
        clean_text(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"custom_rules\[0\]"):
        clean_text("x", custom_rules=[("[", "")])


def test_clean_is_idempotent_on_samples(assets):
    for line in (assets / "messy.txt").read_text(encoding="utf-8").splitlines():
        once = clean_text(line)
        assert clean_text(once) == once


def test_terminal_escapes_are_removed_and_counted_apart_from_encoding():
    text = "\x1b[33m  -- 论语\x1b[0m and \x1b]8;;http://x\x07link\x1b]8;;\x07"
    out, stats = clean_text_with_stats(text)
    assert out == "-- 论语 and link"
    assert stats.terminal_escapes == 4
    assert not stats.encoding_fixed


def test_filter_rules_drop_whole_records(tmp_path):
    from aptops.data import CleanConfig, clean_dataset
    from aptops.data.io import read_dataset

    rules = [(r"(?i)lorem ipsum", None), (r"\bfoo\b", "bar")]
    assert clean_text("Lorem Ipsum dolor sit", custom_rules=rules) == ""
    assert clean_text("a foo b", custom_rules=rules) == "a bar b"
    src = tmp_path / "in.txt"
    src.write_text("keep this foo\nlorem ipsum placeholder\nand this\n")
    result = clean_dataset(src, output_dir=tmp_path / "out", config=CleanConfig(custom_rules=(("(?i)lorem ipsum", None),)))
    assert read_dataset(tmp_path / "out").column("text").to_pylist() == ["keep this foo", "and this"]
    assert result.metrics["filtered_by_rule"] == 1


def test_filter_rules_from_yaml_config(tmp_path):
    from aptops.core.config import load_config
    from aptops.data import CleanConfig

    path = tmp_path / "c.yaml"
    path.write_text(r"""custom_rules:
  - ['(?i)click here', null]
  - ['\s+!', '!']
""")
    cfg = load_config(CleanConfig, path)
    assert cfg.custom_rules == (("(?i)click here", None), ("\\s+!", "!"))
