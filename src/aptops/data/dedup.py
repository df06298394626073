"""Exact and near-duplicate detection: MinHash LSH whose candidates are verified by exact Jaccard.

Buckets only propose pairs; every proposed pair is checked against the real shingle sets, so the
precision of the result is that of exact Jaccard (up to 64-bit hash collisions), and the banding is
tuned towards recall (a missed pair costs more than an extra check). A batch is worked on at once: words are
hashed once, the n-gram shingles of every document come from one pass of numpy over the batch's words, the
signatures of the whole batch from one call into rensa's MinHash (Rust), bands are keyed without Python loops.

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
        num_perm: MinHash permutations the bands are cut from (the signatures hold the bands x rows that they use).
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


def _rensa() -> Any:
    return require("rensa", extra="data", feature="near-duplicate detection")


# \W plus "_": every character but letters (L*) and numbers (N*), as str.isalnum sees them
_NOT_ALNUM = re.compile(r"[\W_]+", re.UNICODE)


def normalise_for_hash(text: str) -> str:
    """NFKC, case-folded, punctuation and whitespace removed: two texts that differ only there are equal."""
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", text).casefold())


def exact_hash(text: str) -> int:
    """A 64-bit hash of :func:`normalise_for_hash`; equal hashes mean exact duplicates."""
    return _xxh().xxh3_64_intdigest(normalise_for_hash(text).encode("utf-8"))


def tokens(text: str, tokenizer: str = "auto") -> list[str]:
    """Split ``text`` into the units shingles are made of."""
    return _split(unicodedata.normalize("NFKC", text).casefold(), text, tokenizer)[0]


def _split(norm: str, text: str, tokenizer: str) -> tuple[list[str], str]:
    """The tokens of an NFKC case-folded text and its :func:`normalise_for_hash` form (for words, the tokens joined:
    ``\\w+`` runs are exactly what remains once everything but letters, numbers and "_" is gone)."""
    if tokenizer == "char":
        return [c for c in norm if not c.isspace()], _NOT_ALNUM.sub("", norm)
    if tokenizer == "auto":
        from aptops.data.resources import cjk_ratio, segment_chinese

        if cjk_ratio(text) > 0.3:
            return [w for w in segment_chinese(norm) if _WORD.fullmatch(w)], _NOT_ALNUM.sub("", norm)
    words = _WORD.findall(norm)
    return words, "".join(words).replace("_", "")


_MULT = 0x9E3779B97F4A7C15
# bytes.translate table: ASCII letters, digits and "_" stay, every other byte becomes a space
_ASCII_WORDS = bytes(c if c < 128 and (chr(c).isalnum() or c == 95) else 32 for c in range(256))


def _combine(words: Any, n: int) -> Any:
    """Every n-gram of ``words`` (64-bit hashes) as one polynomial combination (mod 2^64), position-sensitive."""
    np = _np()
    acc = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * np.uint64(_MULT) + words[k : len(words) - n + 1 + k]
    return acc


@dataclass
class HashedBatch:
    """A batch of texts hashed at once: every document's shingle hashes one after another in ``values`` (the
    document's n-grams in order, repeats kept: MinHash does not mind them), ``offsets`` (``len + 1``) where each
    document starts, and each document's :func:`exact_hash`."""

    values: Any
    offsets: Any
    exact: Any

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def shingles(self, i: int) -> Any:
        """Document ``i``'s sorted unique shingle hashes (its set, for exact Jaccard)."""
        return _np().unique(self.values[self.offsets[i]:self.offsets[i + 1]])


def hash_batch(texts: Sequence[str], config: DedupConfig) -> HashedBatch:
    """Tokens, exact hashes and the n-gram shingles of every text in one pass: each text is normalised once, words
    are hashed once (xxh3), and the n-grams of the whole batch come from one numpy pass over all its words (windows
    that run from one text into the next are dropped; a text shorter than n is one shingle of all its words)."""
    np = _np()
    xxh = _xxh().xxh3_64_intdigest
    toks: list[list[bytes]] = []
    exact = np.empty(len(texts), dtype=np.uint64)
    words_fast = config.tokenizer in ("word", "auto")  # "auto" splits an ASCII text into words too
    for i, text in enumerate(texts):
        text = text or ""
        norm = unicodedata.normalize("NFKC", text).casefold()
        if words_fast and norm.isascii():  # \w+ runs of ASCII, split in C: the same tokens as the regex
            words = norm.encode("ascii").translate(_ASCII_WORDS).split()
            flat = b"".join(words).replace(b"_", b"")
        else:
            split, joined = _split(norm, text, config.tokenizer)
            words, flat = [w.encode("utf-8") for w in split], joined.encode("utf-8")
        toks.append(words)
        exact[i] = xxh(flat)
    lengths = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
    total = int(lengths.sum())
    words = np.fromiter(map(xxh, itertools.chain.from_iterable(toks)), dtype=np.uint64, count=total)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    n = config.ngram
    counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))  # shingles per document
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    values = np.zeros(int(offsets[-1]), dtype=np.uint64)
    long_docs = lengths >= n
    if long_docs.any():
        acc = _combine(words, n)  # windows starting at every word of the batch
        c = counts[long_docs]
        rank = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)  # the k-th window of its document
        values[np.repeat(offsets[:-1][long_docs], c) + rank] = acc[np.repeat(starts[long_docs], c) + rank]
    for i in np.flatnonzero((lengths > 0) & (lengths < n)).tolist():  # shorter than n: one shingle of all its words
        values[offsets[i]] = _combine(words[starts[i]:ends[i]], int(lengths[i]))[0]
    return HashedBatch(values, offsets, exact)


def shingle_hashes(text: str, config: DedupConfig) -> Any:
    """The sorted unique 64-bit hashes of the text's token n-grams (texts shorter than n: one shingle)."""
    return hash_batch([text], config).shingles(0)


class MinHasher:
    """MinHash signatures of shingle hashes, seeded: rensa's MinHash (Rust) computes a whole batch from one flat
    buffer of hashes, ``num_perm`` permutations per document (the same seed gives the same signatures on every
    shard)."""

    def __init__(self, num_perm: int, seed: int) -> None:
        self.num_perm = num_perm
        self.seed = seed

    def digests(self, values: Any, offsets: Any) -> Any:
        """rensa's digest matrix of the documents laid out as in :class:`HashedBatch` (none may be empty)."""
        np = _np()
        return _rensa().RMinHash.digest_matrix_from_flat_token_hashes(
            np.ascontiguousarray(values, dtype=np.uint64), np.asarray(offsets, dtype=np.uint64), self.num_perm,
            self.seed)

    def signatures(self, docs: Sequence[Any] | HashedBatch, *, max_rows: int = 8192) -> Any:
        """Signatures (``len(docs) x num_perm`` uint32) of shingle-hash arrays or a batch; empty docs get all-max
        rows."""
        np = _np()
        if isinstance(docs, HashedBatch):
            lengths = np.diff(docs.offsets)
            parts = [docs.values[docs.offsets[i]:docs.offsets[i + 1]] for i in range(len(docs))]
        else:
            parts, lengths = list(docs), np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        out = np.full((len(parts), self.num_perm), _MASK32, dtype=np.uint32)
        nonempty = np.flatnonzero(lengths > 0)
        for start in range(0, len(nonempty), max_rows):
            rows = nonempty[start:start + max_rows]
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(lengths[rows])
            flat = np.concatenate([parts[i] for i in rows.tolist()])
            out[rows] = np.asarray(self.digests(flat, offsets).to_rows(), dtype=np.uint32)
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
    np = _np()
    batch = hash_batch(texts, config)
    bands, rows = config.band_rows
    hasher = MinHasher(bands * rows, config.seed)
    candidates: set[tuple[int, int]] = set()
    nonempty = np.flatnonzero(np.diff(batch.offsets) > 0)  # empty documents are exact duplicates of each other
    if len(nonempty) > 1:
        # rensa's LSH (the same contiguous bands of rows) flags the documents that share a band with another; only
        # those are banded here, so the signatures of the many unique documents never leave Rust
        offsets = np.append(batch.offsets[nonempty], batch.offsets[-1])
        index = _rensa().RMinHashLSH(config.threshold, bands * rows, bands)
        flags = index.insert_matrix_and_query_duplicate_flags(hasher.digests(batch.values, offsets), 0)
        shared = nonempty[np.asarray(flags, dtype=bool)]
        if len(shared) > 1:
            keys = band_keys(hasher.signatures([batch.values[batch.offsets[i]:batch.offsets[i + 1]]
                                                for i in shared.tolist()]), bands, rows)
            local: set[tuple[int, int]] = set()
            for band in range(bands):
                local |= candidate_pairs(keys[:, band])
            ids = shared.tolist()
            candidates = {(ids[a], ids[b]) for a, b in local}
    exact = exact_duplicate_pairs(batch.exact if exact_hashes is None else exact_hashes)
    return _verify(candidates, functools.lru_cache(maxsize=None)(batch.shingles), config.threshold, exact_pairs=exact)


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
    # the MinHash algorithm too: shards signed by another rensa algorithm version are never mixed
    algorithm = getattr(_rensa().RMinHash, "ALGORITHM_VERSION", "?")
    raw = f"{config.ngram}|{config.tokenizer}|{config.num_perm}|{b}|{r}|{config.seed}|rensa-{algorithm}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]
