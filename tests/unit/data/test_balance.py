"""Balancing the naturally imbalanced Debian fortune categories."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.data.balance import BalanceConfig, balance_dataset

FORTUNES = Path("/usr/share/games/fortunes")


def _fortunes(categories=("computers", "food", "pets"), limit=None) -> pa.Table:
    texts, labels = [], []
    for cat in categories:
        records = [r.strip() for r in (FORTUNES / cat).read_text(encoding="utf-8", errors="replace").split("\n%\n") if r.strip()]
        records = records[:limit] if limit else records
        texts += records
        labels += [cat] * len(records)
    return pa.table({"text": texts, "label": labels})


def test_fortune_categories_are_imbalanced_and_random_oversampling_fixes_it():
    table = _fortunes()
    result = balance_dataset(table, "oversample", 1.0)
    assert max(result.before.values()) > 3 * min(result.before.values())
    assert len(set(result.after.values())) == 1
    assert result.metrics["imbalance_after"] == 1.0
    synth = result.table.column("synthetic").to_pylist()
    assert sum(synth) == result.table.num_rows - table.num_rows
    assert set(result.table.column("text").to_pylist()) == set(table.column("text").to_pylist())


def test_undersampling_to_a_ratio():
    table = _fortunes()
    result = balance_dataset(table, "undersample", 0.5)
    smallest = min(result.before.values())
    assert max(result.after.values()) == 2 * smallest
    assert min(result.after.values()) == smallest


def test_smote_makes_synthetic_vectors_with_seed_texts():
    table = _fortunes(limit=60)
    table = table.filter(pa.array([lab != "pets" or i % 4 == 0 for i, lab in enumerate(table.column("label").to_pylist())]))
    result = balance_dataset(table, config=BalanceConfig(oversampler="smote", features_dim=16))
    assert len(set(result.after.values())) == 1
    feats = result.table.column("features").to_pylist()
    assert len(feats) == result.table.num_rows and len(feats[0]) == 16
    synthetic = [i for i, s in enumerate(result.table.column("synthetic").to_pylist()) if s]
    real_vectors = {tuple(v) for v, s in zip(feats, result.table.column("synthetic").to_pylist(), strict=True) if not s}
    assert all(tuple(feats[i]) not in real_vectors for i in synthetic)  # interpolated, not copies
    assert all(result.table.column("label")[i].as_py() == "pets" for i in synthetic)


def test_augmentation_oversampling_writes_new_text():
    table = _fortunes(("food", "pets"), limit=30)
    table = table.slice(0, 40)  # 30 food, 10 pets
    result = balance_dataset(table, config=BalanceConfig(oversampler="augment", augment_methods=("synonym_replacement", "random_swap")))
    assert result.after == {"food": 30, "pets": 30}
    new = [t for t, s in zip(result.table.column("text").to_pylist(), result.table.column("synthetic").to_pylist(), strict=True) if s]
    originals = set(table.column("text").to_pylist())
    assert len(new) == 20 and sum(1 for t in new if t not in originals) >= 15


def test_tomek_and_hybrid():
    table = _fortunes(limit=80)
    tomek = balance_dataset(table, config=BalanceConfig(method="undersample", undersampler="tomek", features_dim=16))
    assert tomek.table.num_rows <= table.num_rows
    hybrid = balance_dataset(_fortunes(), "hybrid", 1.0)
    counts = sorted(hybrid.before.values())
    assert len(set(hybrid.after.values())) == 1 and max(hybrid.after.values()) == counts[len(counts) // 2]


def test_bad_balance_input():
    with pytest.raises(InvalidArtifactError, match="single class"):
        balance_dataset(pa.table({"text": ["a", "b"], "label": ["x", "x"]}))
    with pytest.raises(InvalidArtifactError, match="no column 'label'"):
        balance_dataset(pa.table({"text": ["a"]}))
    with pytest.raises(ConfigError, match="method='shuffle' is not supported"):
        BalanceConfig(method="shuffle")
