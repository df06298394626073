"""Components of the data stage (image ``aptops-data``, CPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.

Compile one on a CPU: ``python -c "from kfp import compiler; from aptops_components.data import clean_text;
compiler.Compiler().compile(clean_text, '/tmp/clean.yaml')"``.
"""

from typing import List  # kfp reads typing.List in artifact annotations

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from aptops_components import stage_component

component = stage_component("data")


@stage_component("data", config="aptops.data:CleanConfig", tuned=(
    "strategy", "code_language", "text_column", "input_format", "separator", "min_chars", "shard_rows"))
def clean_text(
    source: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    **tuned,
):
    """Clean a text corpus (file or folder of JSONL/Parquet/CSV/text) into a Parquet dataset."""
    params = dict(locals())
    from aptops.core.runtime import config_from_params, run_step
    from aptops.data import CleanConfig, clean_dataset

    config = config_from_params(CleanConfig, params)
    result = run_step("data", "clean", lambda: clean_dataset(source, output_dir=dataset.path, config=config), params)
    dataset.metadata.update({"rows": int(result.metrics["rows_out"]), "text_column": config.text_column})


@stage_component("data", config="aptops.data:StatsConfig", tuned=("text_column",))
def dataset_stats(
    dataset: Input[Dataset],
    stats: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    **tuned,
):
    """Describe a dataset: length statistics, stats.json and an HTML report with a histogram."""
    params = dict(locals())
    import shutil

    from aptops.core.runtime import config_from_params, run_step
    from aptops.data import StatsConfig, dataset_stats

    config = config_from_params(StatsConfig, params)
    result = run_step("data", "stats", lambda: dataset_stats(dataset.path, output_dir=stats.path, config=config), params)
    shutil.copyfile(result.outputs["report"], report.path)


@component
def list_shards(dataset: Input[Dataset]) -> list:
    """The shard file names of a dataset, for a ParallelFor fan-out."""
    from aptops.data.shards import dataset_shards

    return dataset_shards(dataset.path)


@stage_component("data", config="aptops.data:DedupConfig", tuned=(
    "threshold", "ngram", "tokenizer", "num_perm", "seed", "text_column"))
def minhash_signatures(
    dataset: Input[Dataset],
    shard: str,
    signatures: Output[Artifact],
    **tuned,
):
    """Dedup step 1 (one task per shard): shingle hashes and LSH band keys of every row."""
    params = dict(locals())
    import os

    from aptops.core.runtime import config_from_params, run_step
    from aptops.data import DedupConfig
    from aptops.data.shards import shard_index, shard_signatures

    config = config_from_params(DedupConfig, params)
    index = shard_index(shard)
    run_step("data", f"signatures-{index}", lambda: shard_signatures(
        os.path.join(dataset.path, shard), signatures.path, config, shard_index=index), params)


@stage_component("data", config="aptops.data:DedupConfig", tuned=(
    "threshold", "ngram", "tokenizer", "num_perm", "seed", "text_column"))
def find_duplicates(
    signatures: Input[List[Artifact]],
    duplicates: Output[Artifact],
    metrics: Output[Metrics],
    **tuned,
):
    """Dedup step 2 (one task): LSH buckets over all shards, candidates verified by exact Jaccard."""
    params = dict(locals())
    from aptops.core.runtime import config_from_params, run_step
    from aptops.data import DedupConfig
    from aptops.data.shards import cluster_duplicates

    config = config_from_params(DedupConfig, params)
    run_step("data", "duplicates", lambda: cluster_duplicates([s.path for s in signatures], duplicates.path, config),
             params)


@component
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


@component
def merge_shards(shards: Input[List[Dataset]], dataset: Output[Dataset], metrics: Output[Metrics]):
    """Fan-in: gather the filtered shards into one dataset artifact."""
    from aptops.data.shards import merge_shards as merge

    result = merge([(s.metadata["shard"], s.path) for s in shards], dataset.path)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    dataset.metadata.update({"rows": int(result.metrics["rows"])})


@stage_component("data", config="aptops.data.quality:QualityConfig", tuned=(
    "checks", "threshold", "action", "languages", "min_chars", "perplexity_model", "max_perplexity",
    "text_column"),
    # after the pipeline's sharded dedup, near duplicates are gone across every shard: not checked again per shard
    defaults={"checks": "exact_duplicates,length,language,heuristics"})
def quality_check(
    dataset: Input[Dataset],
    scored: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    **tuned,
):
    """Score and flag every row (and drop flagged rows with action=filter); an HTML report for the UI.

    ``perplexity_model`` (a causal LM folder the task can read, e.g. on the model-cache PVC) adds the
    perplexity check.
    """
    params = dict(locals())
    import shutil

    from aptops.core.runtime import config_from_params, run_step
    from aptops.data.quality import QualityConfig, score_quality

    if params["perplexity_model"] and "perplexity" not in params["checks"]:  # naming a model asks for its check
        params["checks"] += ",perplexity"
    config = config_from_params(QualityConfig, params)
    result = run_step("data", "quality", lambda: score_quality(dataset.path, output_dir=scored.path, config=config),
                      params)
    shutil.copyfile(result.outputs["report"], report.path)
    scored.metadata.update({"rows": int(result.metrics["rows_out"])})


@stage_component("data", config="aptops.data.process:ProcessConfig", tuned=("steps",))
def process_data(
    source: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    **tuned,
):
    """clean -> dedup -> augment -> balance -> quality in one task: the steps to run, each step's settings as
    overrides (``"dedup: {threshold: 0.9}"``)."""
    params = dict(locals())
    from aptops.core.runtime import config_from_params, run_step
    from aptops.data.process import ProcessConfig, process_pipeline

    config = config_from_params(ProcessConfig, params)
    result = run_step("data", "process", lambda: process_pipeline(source, output_dir=dataset.path, config=config),
                      params)
    dataset.metadata.update({"rows": int(result.metrics["rows_out"])})


@stage_component("data", config="aptops.data.balance:BalanceConfig", tuned=(
    "method", "target_ratio", "oversampler", "undersampler", "label_column", "text_column"))
def balance_classes(
    dataset: Input[Dataset],
    balanced: Output[Dataset],
    metrics: Output[Metrics],
    **tuned,
):
    """Balance the classes of a labelled dataset; class counts before/after go to the metadata."""
    params = dict(locals())
    from aptops.core.runtime import config_from_params, run_step
    from aptops.data.balance import BalanceConfig
    from aptops.data.balance import balance_classes as balance

    config = config_from_params(BalanceConfig, params)
    result = run_step("data", "balance", lambda: balance(dataset.path, output_dir=balanced.path, config=config), params)
    balanced.metadata.update({"before": result.details["before"], "after": result.details["after"]})
