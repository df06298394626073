"""The data stage (old plugin: Data Processors, ``data_processors``, category data, priority 100).

Try it on a CPU: ``aptops data clean INPUT --out runs/clean``.
"""

from aptops.data.clean import clean_text, clean_text_with_stats
from aptops.data.dedup import DedupConfig, find_near_duplicates
from aptops.data.stage import CleanConfig, StatsConfig, clean_dataset, dataset_stats, dedup_dataset

__all__ = [
    "CleanConfig", "DedupConfig", "StatsConfig", "clean_dataset", "clean_text", "clean_text_with_stats",
    "dataset_stats", "dedup_dataset", "find_near_duplicates",
]
