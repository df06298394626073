"""Near-duplicate detection, side by side: aptops vs rensa (MinHash + LSH in Rust) vs datatrove's MinHash pipeline vs
datasketch's MinHashLSH.

The same corpus and the same shingles (lower-cased word 5-grams) go through each tool; the truth is exact
Jaccard >= threshold over all pairs, found with an inverted index over shingles (no sampling). Reported:
documents per second on this machine and pair precision / recall against the truth, for the pairs each
tool reports (aptops: verified pairs; rensa: LSH candidates its Jaccard estimate keeps; datasketch: LSH query
results; datatrove reports clusters, so its pairs are the pairs inside its clusters) and, for all alike, for the
pairs inside their clusters. Each tool runs twice in turn, the faster run counts (a shared CPU's noise).

Corpus: English records of the Debian fortunes (package `fortunes`) and gensim's Lee news, plus planted
near-duplicates (1-4 word edits of a random 30% of them).

Run on a CPU: ``python bench/data_dedup.py [--docs 27500] [--threshold 0.7] [--out bench/results/data_dedup.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import time
from collections import defaultdict
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
NOT_ENGLISH = {"chinese", "tang300", "song100", "translate-me"}
WORD = re.compile(r"\w+")


def corpus(n_docs: int, seed: int) -> list[str]:
    base: list[str] = []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix or path.is_symlink() or path.name in NOT_ENGLISH or not path.is_file():
            continue
        raw = path.read_bytes()
        if b"\x00" in raw[:4096]:
            continue
        base += [r.strip() for r in raw.decode("utf-8", "replace").split("\n%\n") if len(r.split()) >= 8]
    import gensim

    lee = Path(os.path.dirname(gensim.__file__)) / "test" / "test_data" / "lee_background.cor"
    base += [line.strip() for line in lee.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    rng = random.Random(seed)
    docs = list(dict.fromkeys(base))  # the source has exact copies; keep the benchmark about near ones
    rng.shuffle(docs)
    planted = []
    while len(docs) + len(planted) < n_docs:
        words = rng.choice(docs).split()
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(words))
            if rng.random() < 0.5:
                words[i] = rng.choice(["alpha", "beta", "gamma", "delta", "omega"])
            else:
                words.insert(i, rng.choice(["very", "quite", "really"]))
        planted.append(" ".join(words))
    out = docs[: n_docs - len(planted)] + planted
    rng.shuffle(out)
    return out[:n_docs]


def shingles(text: str, n: int = 5) -> set[str]:
    words = WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def truth_pairs(sets: list[set[str]], threshold: float) -> set[tuple[int, int]]:
    index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for sh in s:
            index[sh].append(i)
    shared: dict[tuple[int, int], int] = defaultdict(int)
    for docs in index.values():
        if len(docs) > 1:
            for a in range(len(docs)):
                for b in range(a + 1, len(docs)):
                    shared[(docs[a], docs[b])] += 1
    return {
        (a, b) for (a, b), inter in shared.items()
        if inter / (len(sets[a]) + len(sets[b]) - inter) >= threshold
    }


def score(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, float]:
    tp = len(found & truth)
    return {"pairs_found": len(found), "precision": tp / len(found) if found else 1.0,
            "recall": tp / len(truth) if truth else 1.0}


def run_aptops(texts: list[str], threshold: float) -> set[tuple[int, int]]:
    from aptops.data.dedup import DedupConfig, find_near_duplicates

    result = find_near_duplicates(texts, DedupConfig(threshold=threshold, tokenizer="word", ngram=5))
    return {(a, b) for a, b, _ in result.pairs}


def run_datasketch(texts: list[str], threshold: float, num_perm: int = 128) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    for i, t in enumerate(texts):
        m = MinHash(num_perm=num_perm)
        m.update_batch([s.encode("utf-8") for s in shingles(t)])
        lsh.insert(i, m)
        hashes.append(m)
    pairs = set()
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            if j != i:
                pairs.add((min(i, j), max(i, j)))
    return pairs


def run_rensa(texts: list[str], threshold: float, num_perm: int = 128, num_bands: int = 16) -> set[tuple[int, int]]:
    """rensa's own pipeline, as its README shows it: R-MinHash of the shingle strings (Rust), its LSH index, and
    its Jaccard estimate between signatures as the final check (16 bands of 8 rows for 128 permutations)."""
    from rensa import RMinHash, RMinHashLSH

    minhashes = RMinHash.from_token_sets([sorted(shingles(t)) for t in texts], num_perm, 42)
    lsh = RMinHashLSH(threshold, num_perm, num_bands)
    lsh.insert_many(minhashes)  # keys 0 .. n-1
    pairs = set()
    for i, (m, found) in enumerate(zip(minhashes, lsh.query_all(minhashes), strict=True)):
        for j in found:
            if j > i and m.jaccard(minhashes[j]) >= threshold:
                pairs.add((i, j))
    return pairs


def run_datatrove(texts: list[str], threshold: float) -> set[tuple[int, int]]:
    """datatrove's three MinHash steps (signatures, buckets, clusters) with its default 14 x 8 banding."""
    import tempfile

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupSignature
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.utils.binaryio import read_tuples_from_file
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Words(WordTokenizer):  # the benchmark's shingling: \w+ words (datatrove's English one needs NLTK data)
        def word_tokenize(self, text: str) -> list[str]:
            return WORD.findall(text.lower())

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    work = Path(tempfile.mkdtemp(prefix="bench-datatrove-"))
    with (work / "docs.jsonl").open("w") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": str(i), "text": t}) + "\n")
    norm = TextNormConfig(norm_numbers=False, norm_unicode_diacritics=False)
    # datatrove 0.10.1 passes str to xxhash, which xxhash 4 refuses; its sha1 option is the one that runs
    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, norm_config=norm,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
    logs = str(work / "logs")
    LocalPipelineExecutor(pipeline=[
        JsonlReader(str(work), glob_pattern="docs.jsonl"),
        MinhashDedupSignature(output_folder=str(work / "sigs"), config=config, language=Words()),
    ], tasks=1, logging_dir=f"{logs}/1").run()
    LocalPipelineExecutor(pipeline=[
        MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config),
    ], tasks=config.num_buckets, workers=os.cpu_count() or 1, logging_dir=f"{logs}/2").run()
    uf = UnionFind()
    for dups in (work / "buckets").glob("*.dups"):
        with dups.open("rb") as fh:
            for _f1, d1, _f2, d2 in read_tuples_from_file(fh, "4I"):
                uf.union(d1, d2)
    return cluster_pairs(uf)


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        while self.parent.get(x, x) != x:
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def cluster_pairs(uf: UnionFind) -> set[tuple[int, int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for x in list(uf.parent):
        groups[uf.find(x)].append(x)
    pairs = set()
    for root, members in groups.items():
        members = sorted({root, *members})
        pairs.update((members[i], members[j]) for i in range(len(members)) for j in range(i + 1, len(members)))
    return pairs


def as_clusters(pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    uf = UnionFind()
    for a, b in pairs:
        uf.union(a, b)
    return cluster_pairs(uf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=27_500)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_dedup.json")
    args = parser.parse_args()
    os.environ.setdefault("APTOPS_NO_PROGRESS", "1")
    texts = corpus(args.docs, args.seed)
    sets = [shingles(t) for t in texts]
    t0 = time.perf_counter()
    truth = truth_pairs(sets, args.threshold)
    print(f"{len(texts)} docs, {len(truth)} true pairs at Jaccard >= {args.threshold} "
          f"(exact, {time.perf_counter() - t0:.1f}s)")
    results = {}
    truth_clusters = as_clusters(truth)
    tools = (("aptops", run_aptops), ("rensa", run_rensa), ("datatrove", run_datatrove), ("datasketch", run_datasketch))
    best: dict[str, float] = {}
    for _ in range(2):  # in turns, so a slow moment of the machine does not fall on one tool only
        for name, fn in tools:
            start = time.perf_counter()
            found = fn(texts, args.threshold)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    for name, fn in tools:
        found, seconds = fn(texts, args.threshold), best[name]
        clustered = {f"cluster_{k}": v for k, v in score(as_clusters(found), truth_clusters).items()}
        results[name] = {"seconds": seconds, "docs_per_s": len(texts) / seconds, **score(found, truth), **clustered}
        r = results[name]
        print(f"{name:>10}: {r['docs_per_s']:8.0f} docs/s  precision {r['precision']:.3f}  recall {r['recall']:.3f}"
              f"  (cluster pairs: precision {r['cluster_precision']:.3f} recall {r['cluster_recall']:.3f})")
    for peer in ("rensa", "datatrove", "datasketch"):
        results[f"ratio_aptops_vs_{peer}_speed"] = results["aptops"]["docs_per_s"] / results[peer]["docs_per_s"]
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "docs": len(texts), "threshold": args.threshold, "true_pairs": len(truth), "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"aptops speed: {results['ratio_aptops_vs_rensa_speed']:.2f}x rensa, "
          f"{results['ratio_aptops_vs_datatrove_speed']:.2f}x datatrove, "
          f"{results['ratio_aptops_vs_datasketch_speed']:.2f}x datasketch; written to {args.out}")


if __name__ == "__main__":
    main()
