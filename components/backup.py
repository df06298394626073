"""Components of the backup stage (image ``aptops-backup``, CPU pool, caching always off).

Credentials are never parameters: they reach the task as environment variables from Kubernetes
Secrets (``ClusterSettings.credential_secrets``), or from the local environment under ``kfp.local``.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from aptops_components import stage_image

IMAGE = stage_image("backup")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def backup_model(
    model_path: str,
    destinations: str,
    result: Output[Artifact],
    metrics: Output[Metrics],
    max_retries: int = 4,
    pack_small_files_kb: int = 0,
    overrides: str = "",
    pipeline: str = "backup",
    run_id: str = "",
):
    """Back a model folder up to comma-separated destinations (s3://, oss://, hf://, modelscope://), verified."""
    import json
    import os

    from aptops.backup import BackupConfig
    from aptops.backup import backup_model as backup
    from aptops.core.runtime import apply_overrides, list_param, run_component

    targets = list_param(destinations)
    config = BackupConfig(max_retries=max_retries, pack_small_files_kb=pack_small_files_kb)
    config = apply_overrides(config, overrides)

    def work():
        out = backup(model_path, targets, config)
        os.makedirs(result.path, exist_ok=True)
        with open(os.path.join(result.path, "backup.json"), "w", encoding="utf-8") as fh:
            json.dump({"manifest": out.manifest, "destinations": out.details["destinations"]}, fh, indent=2)
        out.raise_for_failures()
        return out

    run_component("backup", work, step="backup", pipeline=pipeline, run_id=run_id, metrics=metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def backup_artifact(
    model: Input[Model],
    destinations: str,
    metrics: Output[Metrics],
    max_retries: int = 4,
    overrides: str = "",
    pipeline: str = "deploy",
    run_id: str = "",
):
    """Back up a model artifact produced earlier in the pipeline (a GGUF folder, a trained model)."""
    from aptops.backup import BackupConfig
    from aptops.backup import backup_model as backup
    from aptops.core.runtime import apply_overrides, list_param, run_component

    targets = list_param(destinations)
    config = BackupConfig(max_retries=max_retries)
    config = apply_overrides(config, overrides)

    def work():
        out = backup(model.path, targets, config)
        out.raise_for_failures()
        return out

    run_component("backup", work, step="backup", pipeline=pipeline, run_id=run_id, metrics=metrics)
