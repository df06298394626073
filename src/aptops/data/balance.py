"""Class balancing for labelled text: random, SMOTE and augmentation-based oversampling; random and
Tomek-link undersampling; hybrid. imbalanced-learn does the sampling; text features for SMOTE and Tomek
links are TF-IDF character n-grams reduced by truncated SVD (language-agnostic, no model download).

Try it on a CPU: ``aptops data balance DATASET --out runs/balanced --set label_column=label``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.core.errors import InvalidArtifactError

log = logging.getLogger(__name__)

METHODS = ("oversample", "undersample", "hybrid")
OVERSAMPLERS = ("random", "smote", "augment")
UNDERSAMPLERS = ("random", "tomek")


@dataclass(frozen=True, kw_only=True)
class BalanceConfig:
    """How to balance.

    Attributes:
        method: ``oversample``, ``undersample`` or ``hybrid`` (undersample the largest classes to the
            median class size, then oversample).
        target_ratio: the smallest class size wanted, as a share of the largest (1.0 = equal classes).
        oversampler: ``random`` (copies), ``smote`` (synthetic feature vectors; a synthetic row keeps the
            text of its seed sample and carries its vector in ``features``) or ``augment`` (new text
            written by :func:`aptops.data.augment.augment_text`).
        undersampler: ``random`` or ``tomek`` (drop majority rows that form Tomek links; it removes only
            borderline rows, so it may stop short of the target).
        label_column / text_column: the columns used.
        features_dim: SVD dimensions of the text features (smote, tomek).
        augment_methods: methods for augmentation-based oversampling.
        seed: everything is deterministic for a seed.
    """

    method: str = "oversample"
    target_ratio: float = 1.0
    oversampler: str = "random"
    undersampler: str = "random"
    label_column: str = "label"
    text_column: str = "text"
    features_dim: int = 64
    augment_methods: tuple[str, ...] = ("eda",)
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("oversampler", self.oversampler, OVERSAMPLERS)
        check_choice("undersampler", self.undersampler, UNDERSAMPLERS)
        check_range("target_ratio", self.target_ratio, min_value=0.0, max_value=1.0, min_inclusive=False)
        check_range("features_dim", self.features_dim, min_value=2, max_value=4096)


@dataclass
class BalanceResult:
    """The balanced table and the class counts before and after."""

    table: Any
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        out = {"rows_in": float(sum(self.before.values())), "rows_out": float(sum(self.after.values())),
               "classes": float(len(self.before))}
        if self.before:
            out["imbalance_before"] = max(self.before.values()) / max(1, min(self.before.values()))
            out["imbalance_after"] = max(self.after.values()) / max(1, min(self.after.values()))
        return out


def text_features(texts: list[str], dim: int, seed: int) -> Any:
    """TF-IDF over character 2-4-grams (works for English and Chinese alike), reduced to ``dim`` by SVD."""
    text_mod = require("sklearn.feature_extraction.text", extra="data", feature="text features")
    decomposition = require("sklearn.decomposition", extra="data", feature="text features")
    tfidf = text_mod.TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=1, sublinear_tf=True)
    matrix = tfidf.fit_transform(texts)
    k = max(1, min(dim, matrix.shape[1] - 1, matrix.shape[0] - 1))
    return decomposition.TruncatedSVD(n_components=k, random_state=seed).fit_transform(matrix)


def _targets_up(counts: Counter[Any], ratio: float) -> dict[Any, int]:
    goal = math.ceil(ratio * max(counts.values()))
    return {label: max(n, goal) for label, n in counts.items()}


def _targets_down(counts: Counter[Any], ratio: float) -> dict[Any, int]:
    goal = math.ceil(min(counts.values()) / ratio)
    return {label: min(n, goal) for label, n in counts.items()}


def balance_dataset(dataset: Any, method: str | None = None, target_ratio: float | None = None,
                    *, config: BalanceConfig | None = None) -> BalanceResult:
    """Balance the classes of a labelled table.

    Args:
        dataset: a pyarrow table with the text and label columns.
        method: overrides ``config.method``.
        target_ratio: overrides ``config.target_ratio``.
        config: every other setting.

    Returns:
        A :class:`BalanceResult` (the new table, with a ``synthetic`` column; counts before and after).

    Raises:
        InvalidArtifactError: no label column, or a single class (nothing to balance).
    """
    from dataclasses import replace

    pa = require("pyarrow", extra="data", feature="balance_dataset")
    np = require("numpy", extra="data", feature="balance_dataset")
    config = config or BalanceConfig()
    if method is not None or target_ratio is not None:
        config = replace(config, **{k: v for k, v in (("method", method), ("target_ratio", target_ratio)) if v is not None})
    for col in (config.label_column, config.text_column):
        if col not in dataset.column_names:
            raise InvalidArtifactError(
                f"the dataset has no column {col!r} (columns: {', '.join(dataset.column_names)}): "
                f"set label_column/text_column"
            )
    labels = [str(v) if v is not None else "" for v in dataset.column(config.label_column).to_pylist()]
    if any(v == "" for v in labels):
        raise InvalidArtifactError(f"{labels.count('')} rows have an empty {config.label_column!r}: label them or drop them first")
    counts = Counter(labels)
    if len(counts) < 2:
        only = next(iter(counts), "none")
        raise InvalidArtifactError(
            f"nothing to balance: column {config.label_column!r} holds a single class ({only!r}); "
            "balancing needs at least two classes"
        )
    table = dataset.append_column("synthetic", pa.array([False] * dataset.num_rows)) if "synthetic" not in dataset.column_names else dataset
    texts = [t or "" for t in table.column(config.text_column).to_pylist()]
    idx = np.arange(table.num_rows)
    y = np.asarray(labels)
    if config.method in ("undersample", "hybrid"):
        ratio = config.target_ratio if config.method == "undersample" else None
        keep = _undersample(texts, y, idx, config, ratio)
        table, texts, y, idx = table.take(keep), [texts[i] for i in keep], y[keep], np.arange(len(keep))
    if config.method in ("oversample", "hybrid"):
        table = _oversample(table, texts, y, config)
    after = Counter(str(v) for v in table.column(config.label_column).to_pylist())
    return BalanceResult(table=table, before=dict(counts), after=dict(after))


def _undersample(texts: list[str], y: Any, idx: Any, config: BalanceConfig, ratio: float | None) -> Any:
    under = require("imblearn.under_sampling", extra="data", feature="undersampling")
    np = require("numpy", extra="data", feature="undersampling")
    counts = Counter(y.tolist())
    if ratio is None:  # hybrid: cut the big classes to the median size
        median = int(np.median(list(counts.values())))
        targets = {label: min(n, median) for label, n in counts.items()}
    else:
        targets = _targets_down(counts, ratio)
    if config.undersampler == "tomek":
        sampler = under.TomekLinks(sampling_strategy="majority" if len(counts) == 2 else "not minority")
        sampler.fit_resample(text_features(texts, config.features_dim, config.seed), y)
        return np.sort(sampler.sample_indices_)
    sampler = under.RandomUnderSampler(sampling_strategy=targets, random_state=config.seed)
    sampler.fit_resample(idx.reshape(-1, 1), y)
    return np.sort(sampler.sample_indices_)


def _oversample(table: Any, texts: list[str], y: Any, config: BalanceConfig) -> Any:
    pa = require("pyarrow", extra="data", feature="oversampling")
    np = require("numpy", extra="data", feature="oversampling")
    over = require("imblearn.over_sampling", extra="data", feature="oversampling")
    counts = Counter(y.tolist())
    targets = _targets_up(counts, config.target_ratio)
    if config.oversampler == "random":
        sampler = over.RandomOverSampler(sampling_strategy=targets, random_state=config.seed)
        sampler.fit_resample(np.arange(len(y)).reshape(-1, 1), y)
        picks = sampler.sample_indices_
        out = table.take(picks)
        flags = [i >= len(y) for i in range(len(picks))]
        return out.set_column(out.schema.get_field_index("synthetic"), "synthetic", pa.array(flags))
    if config.oversampler == "smote":
        feats = text_features(texts, config.features_dim, config.seed)
        k = max(1, min(5, min(counts.values()) - 1))
        sampler = over.SMOTE(sampling_strategy=targets, k_neighbors=k, random_state=config.seed)
        x_new, y_new = sampler.fit_resample(feats, y)
        synth, synth_y = x_new[len(y):], y_new[len(y):]
        # a synthetic vector lies between two samples of its class: its text is the nearest real one of that class
        neighbours = require("sklearn.neighbors", extra="data", feature="smote")
        seed_rows = np.zeros(len(synth), dtype=int)
        for label in np.unique(synth_y):
            members = np.flatnonzero(y == label)
            nn = neighbours.NearestNeighbors(n_neighbors=1).fit(feats[members])
            which = np.flatnonzero(synth_y == label)
            seed_rows[which] = members[nn.kneighbors(synth[which], return_distance=False)[:, 0]]
        out = pa.concat_tables([table, table.take(seed_rows)]) if len(synth) else table
        flags = [False] * len(y) + [True] * len(synth)
        out = out.set_column(out.schema.get_field_index("synthetic"), "synthetic", pa.array(flags))
        vectors = np.vstack([feats, synth]).astype(np.float32)
        return out.append_column("features", pa.array(list(vectors), type=pa.list_(pa.float32())))
    from aptops.data.augment import AugmentConfig, augment_text

    rng = np.random.default_rng(config.seed)
    new_rows = []
    for label, goal in targets.items():
        members = np.flatnonzero(y == label)
        need = goal - len(members)
        for j in range(need):
            i = int(members[j % len(members)])
            variants = augment_text(texts[i], config.augment_methods, 1,
                                    config=AugmentConfig(seed=int(rng.integers(0, 2**31))))
            row = table.slice(i, 1).to_pylist()[0]
            row[config.text_column] = variants[0]
            row["synthetic"] = True
            new_rows.append(row)
    if not new_rows:
        return table
    return pa.concat_tables([table, pa.Table.from_pylist(new_rows, schema=table.schema)])




def balance_classes(dataset_dir: Any, *, output_dir: Any, config: BalanceConfig | None = None) -> Any:
    """Balance a dataset artifact into a new one (one shard, ``stats.json`` with the class counts).

    Returns:
        A :class:`~aptops.core.artifacts.StageResult`; ``details`` holds the counts ``before`` and ``after``.
    """
    from aptops.core.artifacts import StageResult, atomic_output, finish_artifact, write_json
    from aptops.data.io import read_dataset

    config = config or BalanceConfig()
    pq = require("pyarrow.parquet", extra="data", feature="balance_classes")
    result = balance_dataset(read_dataset(dataset_dir), config=config)
    with atomic_output(output_dir) as tmp:
        pq.write_table(result.table, tmp / "part-00000.parquet", compression="zstd")
        write_json(tmp / "stats.json", {"before": result.before, "after": result.after, **result.metrics})
        done = StageResult("data", outputs={"dataset": str(output_dir)}, metrics=result.metrics,
                           details={"before": result.before, "after": result.after})
        finish_artifact(tmp, done, config)
    return done
