"""The ``backup`` pipeline: back a model folder up to several destinations (caching off, secrets as env).

Run it on a CPU: ``aptops run backup --local --param model_path=runs/model --param destinations=s3://b/m``
(with ``AWS_*`` variables set in the shell).
"""

from typing import Any

from kfp import dsl

from aptops.cluster.settings import ClusterSettings
from aptops_components import backup as backup_components


def build(settings: ClusterSettings) -> Any:
    backup_model = settings.component(backup_components.backup_model, "backup")

    @dsl.pipeline(name="aptops-backup", description="Back a model folder up to several destinations, verified.")
    def backup(model_path: str = "runs/model", destinations: str = "s3://aptops-models/model", max_retries: int = 4,
               pack_small_files_kb: int = 0):
        """Back a model folder up to several destinations, verified.

        Args:
            model_path: the model folder, readable by the task (a PVC path on a cluster).
            destinations: comma-separated locations: s3://bucket/models/name, oss://..., hf://org/repo, modelscope://org/repo.
            max_retries: retries of each transfer after a transient error.
            pack_small_files_kb: pack files smaller than this many KiB into one archive (0: off).
        """
        task = backup_model(model_path=model_path, destinations=destinations, max_retries=max_retries,
                            pack_small_files_kb=pack_small_files_kb,
                            pipeline="backup", run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        # a backup must always really run: a cached "success" would hide a missing copy
        settings.apply(task, "backup", cache=False)

    return backup
