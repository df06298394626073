"""The ``data`` pipeline: clean a corpus, then describe the cleaned dataset.

Run it on a CPU: ``aptops run data --local`` (cleans the Debian fortunes by default).
"""

from typing import Any

from kfp import dsl

from aptops_components import data as data_components
from aptops_pipelines.cluster import ClusterSettings

DEFAULT_SOURCE = "/usr/share/games/fortunes"


def build(settings: ClusterSettings) -> Any:
    clean_text = settings.component(data_components.clean_text, "data")
    dataset_stats = settings.component(data_components.dataset_stats, "data")

    @dsl.pipeline(
        name="aptops-data",
        description="Clean a text corpus into a Parquet dataset and report its statistics.",
    )
    def data(
        source: str = DEFAULT_SOURCE,
        strategy: str = "basic",
        text_column: str = "text",
        input_format: str = "auto",
        separator: str = "%",
        min_chars: int = 1,
    ):
        """Clean a text corpus into a Parquet dataset and report its statistics.

        Args:
            source: a file or folder of JSONL, Parquet, CSV or text files readable by the task.
            strategy: the cleaning strategy (basic).
            text_column: the column that holds the text.
            input_format: auto (by file suffix), jsonl, parquet, csv or text.
            separator: for text files, a regex matching a whole line between records ('' = one record per line).
            min_chars: records shorter than this after cleaning are dropped.
        """
        clean = clean_text(
            source=source, strategy=strategy, text_column=text_column, input_format=input_format,
            separator=separator, min_chars=min_chars, pipeline="data", run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        settings.apply(clean, "data")
        stats = dataset_stats(
            dataset=clean.outputs["dataset"], text_column=text_column, pipeline="data",
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        settings.apply(stats, "data")

    return data
