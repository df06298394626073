"""Components of the data stage (image ``aptops-data``, CPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.

Compile one on a CPU: ``python -c "from kfp import compiler; from aptops_components.data import clean_text;
compiler.Compiler().compile(clean_text, '/tmp/clean.yaml')"``.
"""

from typing import List  # kfp reads typing.List in artifact annotations

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
    shard_rows: int = 100000,
    overrides: str = "",
    pipeline: str = "data",
    run_id: str = "",
):
    """Clean a text corpus (file or folder of JSONL/Parquet/CSV/text) into a Parquet dataset."""
    from aptops.core.runtime import apply_overrides, run_component
    from aptops.data import CleanConfig, clean_dataset

    config = CleanConfig(strategy=strategy, code_language=code_language or None, text_column=text_column, input_format=input_format,
                         separator=separator or None, min_chars=min_chars, shard_rows=shard_rows)
    config = apply_overrides(config, overrides)
    result = run_component("data", lambda: clean_dataset(source, output_dir=dataset.path, config=config), step="clean",
                           pipeline=pipeline, run_id=run_id, metrics=metrics)
    dataset.metadata.update({"rows": int(result.metrics["rows_out"]), "text_column": text_column})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def dataset_stats(
    dataset: Input[Dataset],
    stats: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    text_column: str = "text",
    overrides: str = "",
    pipeline: str = "data",
    run_id: str = "",
):
    """Describe a dataset: length statistics, stats.json and an HTML report with a histogram."""
    import shutil

    from aptops.core.runtime import apply_overrides, run_component
    from aptops.data import StatsConfig, dataset_stats

    config = StatsConfig(text_column=text_column)
    config = apply_overrides(config, overrides)
    result = run_component("data", lambda: dataset_stats(dataset.path, output_dir=stats.path, config=config), step="stats",
                           pipeline=pipeline, run_id=run_id, metrics=metrics)
    shutil.copyfile(result.outputs["report"], report.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def list_shards(dataset: Input[Dataset]) -> list:
    """The shard file names of a dataset, for a ParallelFor fan-out."""
    from aptops.data.shards import dataset_shards

    return dataset_shards(dataset.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def minhash_signatures(
    dataset: Input[Dataset],
    shard: str,
    signatures: Output[Artifact],
    threshold: float = 0.7,
    ngram: int = 5,
    tokenizer: str = "auto",
    num_perm: int = 128,
    seed: int = 1,
    text_column: str = "text",
    overrides: str = "",
    pipeline: str = "data",
    run_id: str = "",
):
    """Dedup step 1 (one task per shard): shingle hashes and LSH band keys of every row."""
    import os

    from aptops.core.runtime import apply_overrides, run_component
    from aptops.data import DedupConfig
    from aptops.data.shards import shard_index, shard_signatures

    config = DedupConfig(threshold=threshold, ngram=ngram, tokenizer=tokenizer, num_perm=num_perm, seed=seed,
                         text_column=text_column)
    config = apply_overrides(config, overrides)
    run_component("data", lambda: shard_signatures(os.path.join(dataset.path, shard), signatures.path, config,
                                                   shard_index=shard_index(shard)),
                  step=f"signatures-{shard_index(shard)}", pipeline=pipeline, run_id=run_id)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def find_duplicates(
    signatures: Input[List[Artifact]],
    duplicates: Output[Artifact],
    metrics: Output[Metrics],
    threshold: float = 0.7,
    ngram: int = 5,
    tokenizer: str = "auto",
    num_perm: int = 128,
    seed: int = 1,
    text_column: str = "text",
    overrides: str = "",
    pipeline: str = "data",
    run_id: str = "",
):
    """Dedup step 2 (one task): LSH buckets over all shards, candidates verified by exact Jaccard."""
    from aptops.core.runtime import apply_overrides, run_component
    from aptops.data import DedupConfig
    from aptops.data.shards import cluster_duplicates

    config = DedupConfig(threshold=threshold, ngram=ngram, tokenizer=tokenizer, num_perm=num_perm, seed=seed,
                         text_column=text_column)
    config = apply_overrides(config, overrides)
    run_component("data", lambda: cluster_duplicates([s.path for s in signatures], duplicates.path, config),
                  step="duplicates", pipeline=pipeline, run_id=run_id, metrics=metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def filter_duplicates(
    dataset: Input[Dataset],
    shard: str,
    duplicates: Input[Artifact],
    filtered: Output[Dataset],
):
    """Dedup step 3 (one task per shard): the shard without its duplicate rows."""
    import os

    from aptops.data.shards import filter_shard, shard_index

    result = filter_shard(os.path.join(dataset.path, shard), duplicates.path, filtered.path,
                          shard_index=shard_index(shard))
    filtered.metadata.update({"shard": shard, "rows": int(result.metrics["rows_out"])})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def merge_shards(shards: Input[List[Dataset]], dataset: Output[Dataset], metrics: Output[Metrics]):
    """Fan-in: gather the filtered shards into one dataset artifact."""
    from aptops.data.shards import merge_shards as merge

    result = merge([(s.metadata["shard"], s.path) for s in shards], dataset.path)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    dataset.metadata.update({"rows": int(result.metrics["rows"])})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def quality_check(
    dataset: Input[Dataset],
    scored: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    checks: str = "exact_duplicates,length,language,heuristics",
    threshold: float = 0.75,
    action: str = "flag",
    languages: str = "",
    min_chars: int = 20,
    perplexity_model: str = "",
    max_perplexity: float = 1000.0,
    text_column: str = "text",
    overrides: str = "",
    pipeline: str = "data",
    run_id: str = "",
):
    """Score and flag every row (and drop flagged rows with action=filter); an HTML report for the UI.

    ``perplexity_model`` (a causal LM folder the task can read, e.g. on the model-cache PVC) adds the
    perplexity check.
    """
    import shutil

    from aptops.core.runtime import apply_overrides, list_param, run_component
    from aptops.data.quality import QualityConfig, quality_dataset

    selected = list_param(checks)
    if perplexity_model and "perplexity" not in selected:
        selected.append("perplexity")
    config = QualityConfig(
        checks=tuple(selected), threshold=threshold, action=action,
        perplexity_model=perplexity_model or None, max_perplexity=max_perplexity,
        languages=tuple(list_param(languages)), min_chars=min_chars,
        text_column=text_column,
    )
    config = apply_overrides(config, overrides)
    result = run_component("data", lambda: quality_dataset(dataset.path, output_dir=scored.path, config=config), step="quality",
                           pipeline=pipeline, run_id=run_id, metrics=metrics)
    shutil.copyfile(result.outputs["report"], report.path)
    scored.metadata.update({"rows": int(result.metrics["rows_out"])})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def process_data(
    source: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    steps: str = "clean,dedup,quality",
    overrides: str = "",
    pipeline: str = "data",
    run_id: str = "",
):
    """clean -> dedup -> augment -> balance -> quality in one task: the steps to run, each step's settings as
    overrides (``"dedup: {threshold: 0.9}"``)."""
    from aptops.core.runtime import apply_overrides, list_param, run_component
    from aptops.data.process import ProcessConfig, process_pipeline

    config = ProcessConfig(steps=tuple(list_param(steps)))
    config = apply_overrides(config, overrides)
    result = run_component("data", lambda: process_pipeline(source, output_dir=dataset.path, config=config), step="process",
                           pipeline=pipeline, run_id=run_id, metrics=metrics)
    dataset.metadata.update({"rows": int(result.metrics["rows_out"])})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def balance_classes(
    dataset: Input[Dataset],
    balanced: Output[Dataset],
    metrics: Output[Metrics],
    method: str = "oversample",
    target_ratio: float = 1.0,
    oversampler: str = "random",
    undersampler: str = "random",
    label_column: str = "label",
    text_column: str = "text",
    overrides: str = "",
    pipeline: str = "data",
    run_id: str = "",
):
    """Balance the classes of a labelled dataset; class counts before/after go to the metadata."""
    from aptops.core.runtime import apply_overrides, run_component
    from aptops.data.balance import BalanceConfig, balance_dataset_dir

    config = BalanceConfig(method=method, target_ratio=target_ratio, oversampler=oversampler,
                           undersampler=undersampler, label_column=label_column, text_column=text_column)
    config = apply_overrides(config, overrides)

    def work():
        return balance_dataset_dir(dataset.path, output_dir=balanced.path, config=config)

    result = run_component("data", work, step="balance", pipeline=pipeline, run_id=run_id, metrics=metrics)
    balanced.metadata.update({"before": result.details["before"], "after": result.details["after"]})
