"""The data stage (old plugin: Data Processors, ``data_processors``, category data, priority 100).

Try it on a CPU: ``aptops data clean INPUT --out runs/clean``.
"""

from aptops.data.clean import clean_text, clean_text_with_stats
from aptops.data.dedup import DedupConfig, find_near_duplicates
from aptops.data.recipe import CleanConfig, StatsConfig, clean_dataset, dataset_stats, dedup_dataset


def __getattr__(name: str):  # the heavier steps load on first use
    lazy = {
        "augment_text": "aptops.data.augment", "AugmentConfig": "aptops.data.augment",
        "balance_dataset": "aptops.data.balance", "BalanceConfig": "aptops.data.balance",
        "balance_classes": "aptops.data.balance",
        "check_quality": "aptops.data.quality", "QualityConfig": "aptops.data.quality",
        "score_quality": "aptops.data.quality",
        "process_pipeline": "aptops.data.process", "ProcessConfig": "aptops.data.process",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(name)

__all__ = [
    "AugmentConfig",
    "BalanceConfig",
    "CleanConfig",
    "DedupConfig",
    "ProcessConfig",
    "QualityConfig",
    "StatsConfig",
    "augment_text",
    "balance_classes",
    "balance_dataset",
    "check_quality",
    "clean_dataset",
    "clean_text",
    "clean_text_with_stats",
    "dataset_stats",
    "dedup_dataset",
    "find_near_duplicates",
    "process_pipeline",
    "score_quality",
]
