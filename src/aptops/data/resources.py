"""Language resources loaded once, lazily: jieba, OpenCC, stop-word lists, pygments lexers.

Each comes from a registry package (no downloads at run time): jieba's bundled dictionary, OpenCC's
bundled conversion tables, ``stopwordsiso``'s lists, WordNet from Debian's ``wordnet-base``.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from aptops.core.deps import require

log = logging.getLogger(__name__)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df]")


def has_cjk(text: str) -> bool:
    """True when ``text`` holds at least one CJK ideograph."""
    return bool(_CJK.search(text))


def cjk_ratio(text: str) -> float:
    """The share of non-space characters that are CJK ideographs."""
    chars = [c for c in text if not c.isspace()]
    return sum(1 for c in chars if _CJK.match(c)) / len(chars) if chars else 0.0


@functools.lru_cache(maxsize=1)
def jieba() -> Any:
    """jieba with its own chatty logger turned down (it logs dictionary loading at DEBUG/INFO)."""
    module = require("jieba", extra="data", feature="Chinese word segmentation")
    module.setLogLevel(logging.WARNING)
    return module


@functools.lru_cache(maxsize=1)
def jieba_posseg() -> Any:
    jieba()
    return require("jieba.posseg", extra="data", feature="Chinese part-of-speech tagging")


def segment_chinese(text: str) -> list[str]:
    """jieba's precise-mode segmentation, without whitespace tokens."""
    return [w for w in jieba().lcut(text) if w.strip()]


@functools.lru_cache(maxsize=4)
def opencc(config: str = "t2s") -> Any:
    module = require("opencc", extra="data", feature="Traditional to Simplified conversion")
    return module.OpenCC(config)


@functools.lru_cache(maxsize=8)
def stopwords(lang: str) -> frozenset[str]:
    """The stop words of ``lang`` (ISO 639-1).

    English uses scikit-learn's list (318 function words); ``stopwordsiso``'s English list (1,298 words)
    also drops content words such as "world" or "test". Other languages come from ``stopwordsiso``.
    """
    if lang == "en":
        text = require("sklearn.feature_extraction.text", extra="data", feature="English stop words")
        return frozenset(text.ENGLISH_STOP_WORDS)
    module = require("stopwordsiso", extra="data", feature="stop-word removal")
    if not module.has_lang(lang):
        from aptops.core.errors import ConfigError

        raise ConfigError(f"no stop-word list for language {lang!r}", field="language", value=lang)
    return frozenset(module.stopwords(lang))
