"""Components of the data stage (image ``aptops-data``, CPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.

Compile one on a CPU: ``python -c "from kfp import compiler; from aptops_components.data import clean_text;
compiler.Compiler().compile(clean_text, '/tmp/clean.yaml')"``.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from aptops_components import stage_image

IMAGE = stage_image("data")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def clean_text(
    source: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    strategy: str = "basic",
    code_language: str = "",
    text_column: str = "text",
    input_format: str = "auto",
    separator: str = "",
    min_chars: int = 1,
    pipeline: str = "data",
    run_id: str = "",
):
    """Clean a text corpus (file or folder of JSONL/Parquet/CSV/text) into a Parquet dataset."""
    from aptops.core.runtime import run_component
    from aptops.data import CleanConfig, clean_dataset

    config = CleanConfig(strategy=strategy, code_language=code_language or None, text_column=text_column, input_format=input_format,
                         separator=separator or None, min_chars=min_chars)
    result = run_component("data", lambda: clean_dataset(source, dataset.path, config), step="clean",
                           pipeline=pipeline, run_id=run_id, metrics=metrics)
    dataset.metadata.update({"rows": int(result.metrics["rows_out"]), "text_column": text_column})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def dataset_stats(
    dataset: Input[Dataset],
    stats: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    text_column: str = "text",
    pipeline: str = "data",
    run_id: str = "",
):
    """Describe a dataset: length statistics, stats.json and an HTML report with a histogram."""
    import shutil

    from aptops.core.runtime import run_component
    from aptops.data import StatsConfig, dataset_stats

    config = StatsConfig(text_column=text_column)
    result = run_component("data", lambda: dataset_stats(dataset.path, stats.path, config), step="stats",
                           pipeline=pipeline, run_id=run_id, metrics=metrics)
    shutil.copyfile(result.outputs["report"], report.path)
