"""The data stage over whole datasets: clean a corpus into a dataset artifact, then describe it.

Try it on a CPU::

    aptops data clean /usr/share/games/fortunes/fortunes --out runs/clean --set separator=%
    aptops data stats runs/clean --out runs/stats
"""

from __future__ import annotations

import html
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aptops.core.artifacts import StageResult, atomic_output, check_output, finish_artifact, write_json
from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.core.logging import progress
from aptops.data.clean import STRATEGIES, clean_text_with_stats, compile_rules, summarize
from aptops.data.dedup import DedupConfig
from aptops.data.io import FORMATS, MAX_DEPTH, MAX_FIELD_MB, ShardWriter, read_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CleanConfig:
    """How :func:`clean_dataset` reads and cleans a corpus.

    Attributes:
        strategy: ``basic``, ``aggressive``, ``chinese`` or ``code``.
        code_language: for ``code``, a pygments language name (``python``, ``c``, ``bash`` ...);
            ``None`` guesses per record.
        text_column: the column holding the text.
        input_format: ``auto`` (by suffix), ``jsonl``, ``parquet``, ``csv`` or ``text``.
        separator: for text inputs, a regex matching a whole line between records; ``None`` = one per line.
        min_chars: drop records shorter than this after cleaning (1 drops only empty ones).
        custom_rules: extra ``[regex, replacement]`` pairs applied after the strategy, in order;
            ``[regex, null]`` is a filter that drops every record it matches.
        shard_rows: rows per output Parquet shard.
        max_depth: the deepest nesting of objects and lists a JSON row may have (a row deeper is refused with
            its number: a 10,000-level row once drove the JSON reader to 7 GB and a crash).
        max_field_mb: the largest JSONL line, CSV field or text record, in MiB.
    """

    strategy: str = "basic"
    code_language: str | None = None
    text_column: str = "text"
    input_format: str = "auto"
    separator: str | None = None
    min_chars: int = 1
    custom_rules: tuple[tuple[str, str | None], ...] = ()
    shard_rows: int = 100_000
    max_depth: int = MAX_DEPTH
    max_field_mb: int = MAX_FIELD_MB

    def __post_init__(self) -> None:
        check_choice("strategy", self.strategy, STRATEGIES)
        check_range("max_depth", self.max_depth, min_value=1, max_value=10_000)
        check_range("max_field_mb", self.max_field_mb, min_value=1, max_value=4096)
        check_choice("input_format", self.input_format, FORMATS)
        if not self.text_column.strip():
            raise ConfigError("text_column must not be empty", field="text_column", value=self.text_column)
        check_range("min_chars", self.min_chars, min_value=0)
        check_range("shard_rows", self.shard_rows, min_value=1)
        compile_rules(self.custom_rules)  # validate early, before any file is opened
        if self.code_language is not None:
            from aptops.data.code import get_lexer

            get_lexer(self.code_language)


@dataclass(frozen=True, kw_only=True)
class StatsConfig:
    """How :func:`dataset_stats` describes a dataset.

    Attributes:
        text_column: the column holding the text.
        histogram_bins: bins of the length histogram in the report.
    """

    text_column: str = "text"
    histogram_bins: int = 30

    def __post_init__(self) -> None:
        check_range("histogram_bins", self.histogram_bins, min_value=1, max_value=1000)


def clean_dataset(source: str | Path, *, output_dir: str | Path, config: CleanConfig | None = None) -> StageResult:
    """Clean every record of ``source`` into a dataset artifact at ``output_dir``.

    Args:
        source: a file or folder of JSONL, Parquet, CSV or text files.
        output_dir: where the dataset folder (Parquet shards, ``stats.json``) is written, atomically.
        config: the cleaning settings.

    Returns:
        A :class:`StageResult` whose metrics count rows in/out and what the cleaner removed.

    Raises:
        ArtifactNotFoundError: ``source`` does not exist.
        InvalidArtifactError: a file cannot be parsed or lacks the text column.
    """
    config = config or CleanConfig()
    pa = require("pyarrow", extra="data", feature="clean_dataset")
    rules = compile_rules(config.custom_rules)
    batches = read_batches(
        source, text_column=config.text_column, input_format=config.input_format, separator=config.separator,
        max_depth=config.max_depth, max_field_mb=config.max_field_mb,
    )
    rows_in = chars_in = chars_out = 0
    totals: dict[str, float] = {}
    with atomic_output(output_dir) as tmp:
        writer = ShardWriter(tmp, shard_rows=config.shard_rows)
        for batch in progress(batches, desc="cleaning", unit="batch", log_every=1):
            texts = batch.column(config.text_column).to_pylist()
            cleaned, per_text = [], []
            for text in texts:
                text = text or ""
                out, st = clean_text_with_stats(text, config.strategy, rules, language=config.code_language)
                cleaned.append(out)
                per_text.append(st)
                chars_in += len(text)
            rows_in += len(texts)
            for key, value in summarize(per_text).items():  # per batch: memory stays flat on big corpora
                totals[key] = totals.get(key, 0.0) + value
            idx = batch.schema.get_field_index(config.text_column)
            batch = batch.set_column(idx, config.text_column, pa.array(cleaned, type=pa.string()))
            keep = [len(t) >= config.min_chars for t in cleaned]  # the cleaned strings are still at hand
            chars_out += sum(len(t) for t, k in zip(cleaned, keep, strict=True) if k)
            writer.write(batch.filter(pa.array(keep)))
        shards = writer.close()
        if writer.rows == 0:
            raise InvalidArtifactError(
                f"nothing left after cleaning {str(source)!r}: {rows_in} records read, all shorter than "
                f"min_chars={config.min_chars}; check text_column/separator or lower min_chars",
                path=str(source),
            )
        metrics = {
            "rows_in": float(rows_in),
            "rows_out": float(writer.rows),
            "rows_dropped": float(rows_in - writer.rows),
            "chars_in": float(chars_in),
            "chars_out": float(chars_out),
            "shards": float(len(shards)),
            **totals,
        }
        stats = {"stage": "data", "step": "clean", "strategy": config.strategy, "source": str(source),
                 "text_column": config.text_column, "shards": shards, **metrics}
        write_json(tmp / "stats.json", stats)
        result = StageResult("data", outputs={"dataset": str(Path(output_dir))}, metrics=metrics,
                             details={"shards": shards})
        finish_artifact(tmp, result, config)
    log.info("cleaned %d records into %d (%d shards) at %s", rows_in, writer.rows, len(shards), output_dir)
    return result


def dataset_stats(dataset_dir: str | Path, *, output_dir: str | Path, config: StatsConfig | None = None) -> StageResult:
    """Describe a dataset artifact: row and length statistics, ``stats.json`` and ``report.html``.

    Args:
        dataset_dir: a complete dataset artifact.
        output_dir: where the report folder is written, atomically.
        config: the statistics settings.

    Returns:
        A :class:`StageResult` with the statistics as metrics.
    """
    config = config or StatsConfig()
    from aptops.data.dedup import exact_hash
    from aptops.data.shards import dataset_shards

    pq = require("pyarrow.parquet", extra="data", feature="dataset_stats")
    chars: list[int] = []
    words_total = 0
    hashes: set[int] = set()
    # streamed batch by batch: memory holds a length and a hash per row, never the texts
    for name in dataset_shards(dataset_dir):
        parquet = pq.ParquetFile(Path(dataset_dir) / name)
        if config.text_column not in parquet.schema_arrow.names:
            raise InvalidArtifactError(
                f"dataset {str(dataset_dir)!r} has no column {config.text_column!r}", path=str(dataset_dir)
            )
        for batch in parquet.iter_batches(batch_size=10_000, columns=[config.text_column]):
            for text in batch.column(0).to_pylist():
                text = text or ""
                chars.append(len(text))
                words_total += len(text.split())
                hashes.add(exact_hash(text))
    metrics = {
        "rows": float(len(chars)),
        "chars_total": float(sum(chars)),
        "words_total": float(words_total),
        "chars_mean": float(statistics.fmean(chars)) if chars else 0.0,
        "chars_median": float(statistics.median(chars)) if chars else 0.0,
        "chars_p95": _quantile(chars, 0.95),
        "chars_max": float(max(chars, default=0)),
        "unique_ratio": float(len(hashes) / len(chars)) if chars else 0.0,
    }
    hist = _histogram(chars, config.histogram_bins)
    with atomic_output(output_dir) as tmp:
        write_json(tmp / "stats.json", {"dataset": str(dataset_dir), **metrics, "length_histogram": hist})
        (tmp / "report.html").write_text(_report_html(str(dataset_dir), metrics, hist), encoding="utf-8")
        result = StageResult("data", outputs={"report": str(Path(output_dir) / "report.html"),
                                              "stats": str(Path(output_dir) / "stats.json")}, metrics=metrics)
        finish_artifact(tmp, result, config)
    return result


def _quantile(values: Sequence[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return float(ordered[pos])


def _histogram(values: Sequence[int], bins: int) -> dict[str, list[float]]:
    """Counts over log-spaced bins: text lengths are long-tailed, linear bins put nearly all rows in one bar."""
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = max(1, min(values)), max(2, max(values))
    ratio = (hi / lo) ** (1 / bins) if hi > lo else 2.0
    edges = [lo * ratio**i for i in range(bins + 1)]
    counts = [0] * bins
    log_lo, log_step = math.log(lo), math.log(ratio)
    for v in values:
        i = int((math.log(max(v, lo)) - log_lo) / log_step) if log_step > 0 else 0
        counts[min(bins - 1, max(0, i))] += 1
    return {"edges": edges, "counts": [float(c) for c in counts]}


def _report_html(dataset: str, metrics: dict[str, float], hist: dict[str, list[float]]) -> str:
    """A self-contained page: a metrics table and an SVG histogram of record lengths."""
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{v:,.2f}</td></tr>" for k, v in metrics.items()
    )
    counts, edges = hist["counts"], hist["edges"]
    w, h, pad = 680, 260, 40
    bars = []
    peak = max(counts, default=1.0) or 1.0
    bw = (w - 2 * pad) / max(len(counts), 1)
    for i, c in enumerate(counts):
        bh = (h - 2 * pad) * c / peak
        x, y = pad + i * bw, h - pad - bh
        label = f"{edges[i]:.0f}-{edges[i + 1]:.0f} chars: {c:.0f} rows"
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}" fill="#4c78a8">'
            f"<title>{html.escape(label)}</title></rect>"
        )
    ticks = []
    for i in range(0, len(edges), max(1, len(counts) // 6)):
        x = pad + i * bw
        ticks.append(f'<line x1="{x:.1f}" y1="{h - pad}" x2="{x:.1f}" y2="{h - pad + 4}" stroke="#555"/>'
                     f'<text x="{x:.1f}" y="{h - 8}" font-size="11" text-anchor="middle">{edges[i]:,.0f}</text>')
    axis = (
        "".join(ticks)
        + f'<text x="{w - pad}" y="{pad - 8}" font-size="11" text-anchor="end">characters, log scale</text>'
        + f'<text x="{pad}" y="{pad - 8}" font-size="11">{peak:,.0f} rows</text>'
        + f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#555"/>'
        if edges else ""
    )
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">{"".join(bars)}{axis}</svg>'
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>aptops dataset report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
        f"<h1>Dataset report</h1><p>{html.escape(dataset)}</p><table>{rows}</table>"
        f"<h2>Record length (characters)</h2>{svg}</body></html>"
    )


def dedup_dataset(dataset_dir: str | Path, *, output_dir: str | Path, config: DedupConfig | None = None) -> StageResult:
    """Remove exact and near duplicates across all shards of a dataset, with the three sharded steps run here.

    Args:
        dataset_dir: a complete dataset artifact.
        output_dir: the deduplicated dataset artifact (same shards, fewer rows).
        config: shingling, threshold and LSH settings.

    Returns:
        A :class:`StageResult` counting documents, verified pairs and removed duplicates.
    """
    import shutil
    import tempfile

    from aptops.data.shards import cluster_duplicates, dataset_shards, filter_shard, shard_signatures

    config = config or DedupConfig()
    output_dir = check_output(output_dir)
    shards = dataset_shards(dataset_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.work-", dir=output_dir.parent))
    try:
        sigs = [
            shard_signatures(Path(dataset_dir) / name, work / f"sig-{i:05d}", config, shard_index=i).outputs["signatures"]
            for i, name in enumerate(shards)
        ]
        clusters = cluster_duplicates(sigs, work / "duplicates", config)
        with atomic_output(output_dir) as tmp:
            rows_out = 0
            for i, name in enumerate(shards):
                rows_out += int(filter_shard(Path(dataset_dir) / name, work / "duplicates", tmp / name,
                                             shard_index=i).metrics["rows_out"])
            metrics = {**clusters.metrics, "rows_out": float(rows_out)}
            write_json(tmp / "stats.json", {"stage": "data", "step": "dedup", "source": str(dataset_dir),
                                            "threshold": config.threshold, **metrics})
            result = StageResult("data", outputs={"dataset": str(output_dir)}, metrics=metrics,
                                 details={"shards": shards})
            finish_artifact(tmp, result, config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
