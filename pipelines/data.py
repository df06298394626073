"""The ``data`` pipeline: clean a corpus, remove near duplicates across shards, score quality, describe it.

Near-duplicate removal fans out over the cleaned dataset's shards (``dsl.ParallelFor``) and fans back in
(``dsl.Collected``): signatures per shard, one clustering task, a filter per shard, a merge.

Run it on a CPU: ``aptops run data --local`` (the Debian fortunes by default).
"""

from typing import Any

from kfp import dsl

from aptops.cluster.settings import ClusterSettings
from aptops_components import data as data_components

DEFAULT_SOURCE = "/usr/share/games/fortunes"


def build(settings: ClusterSettings) -> Any:
    c = {name: settings.component(getattr(data_components, name), "data") for name in (
        "clean_text", "list_shards", "minhash_signatures", "find_duplicates", "filter_duplicates",
        "merge_shards", "quality_check", "dataset_stats",
    )}
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER

    @dsl.pipeline(
        name="aptops-data",
        description="Clean a text corpus, remove near duplicates across its shards, and report its statistics.",
    )
    def data(
        source: str = DEFAULT_SOURCE,
        strategy: str = "basic",
        code_language: str = "",
        text_column: str = "text",
        input_format: str = "auto",
        separator: str = "%",
        min_chars: int = 1,
        shard_rows: int = 5000,
        dedup_threshold: float = 0.7,
        dedup_ngram: int = 5,
        dedup_tokenizer: str = "auto",
        dedup_num_perm: int = 128,
        quality_checks: str = "length,language,heuristics",
        quality_action: str = "flag",
        quality_languages: str = "",
        quality_min_chars: int = 20,
    ):
        """Clean a text corpus, remove near duplicates across its shards, and report its statistics.

        Args:
            source: a file or folder of JSONL, Parquet, CSV or text files readable by the task, or a URI read in place
                (s3://bucket/corpus/, oss://, gs://, hf://datasets/org/name/data/*.parquet, https://).
            strategy: the cleaning strategy: basic, aggressive, chinese or code.
            code_language: for strategy=code, a pygments language name ('' guesses it).
            text_column: the column that holds the text.
            input_format: auto (by file suffix), jsonl, parquet, csv or text.
            separator: for text files, a regex matching a whole line between records ('' = one record per line).
            min_chars: records shorter than this after cleaning are dropped.
            shard_rows: rows per Parquet shard of the cleaned dataset (the unit of parallel dedup work).
            dedup_threshold: Jaccard similarity at or above which two records are near duplicates.
            dedup_ngram: shingle length in tokens.
            dedup_tokenizer: auto (jieba for mostly-Chinese text), word or char.
            dedup_num_perm: MinHash permutations.
            quality_checks: comma-separated checks: exact_duplicates, near_duplicates, length, language, heuristics.
            quality_action: flag (keep every row, with flags and a score) or filter (drop flagged rows).
            quality_languages: comma-separated ISO 639-1 codes to keep ('' keeps every language).
            quality_min_chars: rows shorter than this are flagged too_short.
        """
        dedup = {"threshold": dedup_threshold, "ngram": dedup_ngram, "tokenizer": dedup_tokenizer,
                 "num_perm": dedup_num_perm, "text_column": text_column}
        clean = settings.apply(c["clean_text"](
            source=source, strategy=strategy, code_language=code_language, text_column=text_column,
            input_format=input_format, separator=separator, min_chars=min_chars, shard_rows=shard_rows,
            pipeline="data", run_id=run_id,
        ), "data")
        shards = settings.apply(c["list_shards"](dataset=clean.outputs["dataset"]), "data")
        with dsl.ParallelFor(shards.output, name="signatures-per-shard") as shard:
            sig = settings.apply(c["minhash_signatures"](
                dataset=clean.outputs["dataset"], shard=shard, pipeline="data", run_id=run_id, **dedup), "data")
        dups = settings.apply(c["find_duplicates"](
            signatures=dsl.Collected(sig.outputs["signatures"]), pipeline="data", run_id=run_id, **dedup), "data")
        with dsl.ParallelFor(shards.output, name="filter-per-shard") as shard:
            kept = settings.apply(c["filter_duplicates"](
                dataset=clean.outputs["dataset"], shard=shard, duplicates=dups.outputs["duplicates"]), "data")
        merged = settings.apply(c["merge_shards"](shards=dsl.Collected(kept.outputs["filtered"])), "data")
        quality = settings.apply(c["quality_check"](
            dataset=merged.outputs["dataset"], checks=quality_checks, action=quality_action,
            languages=quality_languages, min_chars=quality_min_chars, text_column=text_column,
            pipeline="data", run_id=run_id), "data")
        settings.apply(c["dataset_stats"](
            dataset=quality.outputs["scored"], text_column=text_column, pipeline="data", run_id=run_id), "data")

    return data
