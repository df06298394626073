"""Exact and near-duplicate detection: MinHash LSH whose candidates are verified by exact Jaccard.

Buckets only propose pairs; every proposed pair is checked against the real shingle sets, so the
precision of the result is that of exact Jaccard (up to 64-bit hash collisions), and the banding is
tuned towards recall (a missed pair costs more than an extra check). Everything is vectorised with
numpy: shingles are hashed once per word, signatures for a whole batch come from one
``minimum.reduceat``, bands are keyed without Python loops.

The sharded form runs in three steps, each a KFP component (and a plain function here):
:func:`shard_signatures` per shard, :func:`cluster_duplicates` over all shards (band by band, so memory
holds one band of keys, not every signature), :func:`filter_shard` per shard.

Try it on a CPU: ``aptops data dedup INPUT_DATASET --out runs/dedup``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aptops.core.config import check_choice, check_range
from aptops.core.deps import require

log = logging.getLogger(__name__)

TOKENIZERS = ("auto", "word", "char")
_MASK32 = (1 << 32) - 1
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Near-duplicate settings.

    Attributes:
        threshold: the Jaccard similarity of shingle sets at or above which two texts are duplicates.
        ngram: shingle length in tokens (word 5-grams by default).
        tokenizer: ``word`` (``\\w+`` runs, lower-cased), ``char`` (characters, for CJK), or ``auto``
            (jieba words for texts that are mostly CJK, else ``word``).
        num_perm: MinHash permutations.
        bands: LSH bands; ``None`` picks bands and rows for ``threshold`` (recall first).
        seed: the permutation seed; the same seed gives the same signatures on every shard.
        text_column: the column holding the text.
    """

    threshold: float = 0.7
    ngram: int = 5
    tokenizer: str = "auto"
    num_perm: int = 128
    bands: int | None = None
    seed: int = 1
    text_column: str = "text"

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, min_value=0.0, max_value=1.0, min_inclusive=False)
        check_range("ngram", self.ngram, min_value=1, max_value=64)
        check_choice("tokenizer", self.tokenizer, TOKENIZERS)
        check_range("num_perm", self.num_perm, min_value=8, max_value=1024)
        if self.bands is not None:
            check_range("bands", self.bands, min_value=1, max_value=self.num_perm)

    @property
    def band_rows(self) -> tuple[int, int]:
        """(bands, rows per band)."""
        if self.bands is not None:
            return self.bands, self.num_perm // self.bands
        return optimal_bands(self.threshold, self.num_perm)


@functools.lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, *, fp_weight: float = 0.05, fn_weight: float = 0.95) -> tuple[int, int]:
    """Bands and rows minimising weighted false-positive and false-negative areas of the S-curve.

    False positives are cheap here (exact verification removes them), so misses weigh 19x more.
    """

    def prob(s: float, b: int, r: int) -> float:
        return 1.0 - (1.0 - s**r) ** b

    def integral(f: Any, lo: float, hi: float, steps: int = 200) -> float:
        width = (hi - lo) / steps
        return sum(f(lo + (i + 0.5) * width) for i in range(steps)) * width

    best, best_err = (1, num_perm), math.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = integral(lambda s, b=b, r=r: prob(s, b, r), 0.0, threshold)
            fn = integral(lambda s, b=b, r=r: 1.0 - prob(s, b, r), threshold, 1.0)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def _np() -> Any:
    return require("numpy", extra="data", feature="near-duplicate detection")


def _xxh() -> Any:
    return require("xxhash", extra="data", feature="near-duplicate detection")


def normalise_for_hash(text: str) -> str:
    """NFKC, case-folded, punctuation and whitespace removed: two texts that differ only there are equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


def exact_hash(text: str) -> int:
    """A 64-bit hash of :func:`normalise_for_hash`; equal hashes mean exact duplicates."""
    return _xxh().xxh3_64_intdigest(normalise_for_hash(text).encode("utf-8"))


def tokens(text: str, tokenizer: str = "auto") -> list[str]:
    """Split ``text`` into the units shingles are made of."""
    if tokenizer == "char":
        return [c for c in unicodedata.normalize("NFKC", text).casefold() if not c.isspace()]
    if tokenizer == "auto":
        from aptops.data.resources import cjk_ratio, segment_chinese

        if cjk_ratio(text) > 0.3:
            return [w for w in segment_chinese(unicodedata.normalize("NFKC", text).casefold()) if _WORD.fullmatch(w)]
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def shingle_hashes(text: str, config: DedupConfig) -> Any:
    """The sorted unique 64-bit hashes of the text's token n-grams (texts shorter than n: one shingle)."""
    np = _np()
    xxh = _xxh()
    toks = tokens(text, config.tokenizer)
    if not toks:
        return np.zeros(0, dtype=np.uint64)
    words = np.fromiter((xxh.xxh3_64_intdigest(t.encode("utf-8")) for t in toks), dtype=np.uint64, count=len(toks))
    n = min(config.ngram, len(words))
    # polynomial combination of n word hashes (mod 2^64): position-sensitive, vectorised
    acc = np.zeros(len(words) - n + 1, dtype=np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * mult + words[k : len(words) - n + 1 + k]
    return np.unique(acc)


class MinHasher:
    """Multiply-shift hash permutations ``(a*x + b) >> 32`` over 64-bit shingle hashes, ``num_perm`` of them."""

    def __init__(self, num_perm: int, seed: int) -> None:
        np = _np()
        rng = np.random.default_rng(seed)
        self.a = (rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def signatures(self, docs: Sequence[Any], *, max_cells: int = 4_000_000) -> Any:
        """Signatures (``len(docs) x num_perm`` uint32) of shingle-hash arrays; empty docs get all-max rows."""
        np = _np()
        out = np.full((len(docs), self.num_perm), _MASK32, dtype=np.uint32)
        start = 0
        while start < len(docs):
            # group docs so one (num_perm x shingles) block stays under max_cells values
            end, cells = start, 0
            while end < len(docs) and (cells == 0 or cells + len(docs[end]) * self.num_perm <= max_cells):
                cells += len(docs[end]) * self.num_perm
                end += 1
            batch = docs[start:end]
            nonempty = [i for i, d in enumerate(batch) if len(d)]
            if nonempty:
                flat = np.concatenate([batch[i] for i in nonempty])
                offsets = np.cumsum([0] + [len(batch[i]) for i in nonempty[:-1]])
                with np.errstate(over="ignore"):
                    hashed = (np.multiply.outer(self.a, flat) + self.b[:, None]) >> np.uint64(32)
                mins = np.minimum.reduceat(hashed, offsets, axis=1).astype(np.uint32)
                out[[start + i for i in nonempty]] = mins.T
            start = end
        return out


def band_keys(signatures: Any, bands: int, rows: int) -> Any:
    """One 64-bit key per (document, band): ``len(signatures) x bands`` uint64."""
    np = _np()
    sig = signatures[:, : bands * rows].astype(np.uint64).reshape(len(signatures), bands, rows)
    keys = np.zeros((len(signatures), bands), dtype=np.uint64)
    mult = np.uint64(0xC2B2AE3D27D4EB4F)
    with np.errstate(over="ignore"):
        for j in range(rows):
            keys = keys * mult + sig[:, :, j] + np.uint64(j + 1)
    # the band index goes into the key so equal rows in different bands never collide
    return keys ^ (np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def candidate_pairs(keys: Any, *, max_all_pairs: int = 32) -> set[tuple[int, int]]:
    """Pairs of documents sharing a band key (one band's column of keys at a time).

    A bucket of up to ``max_all_pairs`` members yields every pair; a bigger one (thousands of exact
    copies) yields a star to its first member plus a chain, which keeps the union-find connected without
    a quadratic number of checks.
    """
    np = _np()
    pairs: set[tuple[int, int]] = set()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(keys)]))
    for s, e in zip(starts[(ends - starts) > 1], ends[(ends - starts) > 1], strict=True):
        members = sorted(order[s:e].tolist())
        if len(members) <= max_all_pairs:
            pairs.update((members[i], members[j]) for i in range(len(members)) for j in range(i + 1, len(members)))
        else:
            first = members[0]
            pairs.update((first, m) for m in members[1:])
            pairs.update(itertools.pairwise(members[1:]))
    return pairs


def jaccard(a: Any, b: Any) -> float:
    """Exact Jaccard similarity of two sorted unique hash arrays."""
    np = _np()
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller index is the root: the first occurrence is the one kept
            self.parent[max(ra, rb)] = min(ra, rb)

    def clusters(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        for root, members in out.items():
            if root not in members:
                members.append(root)
            members.sort()
        return out


@dataclass
class DuplicateResult:
    """Verified duplicate pairs, clusters (root = first occurrence) and which documents to drop."""

    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    clusters: dict[int, list[int]] = field(default_factory=dict)
    candidates: int = 0
    exact_duplicates: int = 0

    @property
    def remove(self) -> set[int]:
        return {m for root, members in self.clusters.items() for m in members if m != root}


def find_near_duplicates(
    texts: Sequence[str], config: DedupConfig | None = None, *, exact_hashes: Sequence[int] | None = None
) -> DuplicateResult:
    """Near (and exact) duplicates among ``texts``, all in memory; indices refer to ``texts``.

    Args:
        texts: the documents.
        config: thresholds and shingling.
        exact_hashes: :func:`exact_hash` of each text, when the caller already has them.

    Returns:
        Verified pairs with their Jaccard similarity, clusters, and the documents to remove.
    """
    config = config or DedupConfig()
    shingles = [shingle_hashes(t or "", config) for t in texts]
    hasher = MinHasher(config.num_perm, config.seed)
    bands, rows = config.band_rows
    keys = band_keys(hasher.signatures(shingles), bands, rows)
    candidates: set[tuple[int, int]] = set()
    for band in range(bands):
        candidates |= candidate_pairs(keys[:, band])
    if exact_hashes is None:
        exact_hashes = [exact_hash(t or "") for t in texts]
    exact = exact_duplicate_pairs(exact_hashes)
    return _verify(candidates, lambda i: shingles[i], config.threshold, exact_pairs=exact)


def exact_duplicate_pairs(hashes: Sequence[int] | Any) -> list[tuple[int, int]]:
    """Pairs of neighbours among equal :func:`exact_hash` values: enough for union-find to join every copy."""
    np = _np()
    hashes = np.asarray(hashes, dtype=np.uint64)
    order = np.argsort(hashes, kind="stable")
    same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
    return [(int(order[i]), int(order[i + 1])) for i in same]


def _verify(
    candidates: Iterable[tuple[int, int]], shingles_of: Any, threshold: float,
    *, exact_pairs: Iterable[tuple[int, int]] = (),
) -> DuplicateResult:
    uf = UnionFind()
    result = DuplicateResult()
    n_candidates = 0
    for a, b in sorted(candidates):
        n_candidates += 1
        sim = jaccard(shingles_of(a), shingles_of(b))
        if sim >= threshold:
            result.pairs.append((a, b, sim))
            uf.union(a, b)
    # texts equal after normalisation are duplicates even when too short to shingle well
    for a, b in exact_pairs:
        result.exact_duplicates += 1
        uf.union(a, b)
    result.candidates = n_candidates
    result.clusters = uf.clusters()
    return result


def config_fingerprint(config: DedupConfig) -> str:
    """Signatures from different settings must never be mixed; this names the settings."""
    b, r = config.band_rows
    raw = f"{config.ngram}|{config.tokenizer}|{config.num_perm}|{b}|{r}|{config.seed}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]
