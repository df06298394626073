"""Components of the backup stage (image ``aptops-backup``, CPU pool, caching always off).

Credentials are never parameters: they reach the task as environment variables from Kubernetes
Secrets (``ClusterSettings.credential_secrets``), or from the local environment under ``kfp.local``.
"""

from kfp.dsl import Artifact, Input, Metrics, Model, Output

from aptops_components import stage_component


@stage_component("backup", config="aptops.backup:BackupConfig", tuned=("max_retries", "pack_small_files_kb"))
def backup_model(
    model_path: str,
    destinations: str,
    result: Output[Artifact],
    metrics: Output[Metrics],
    **tuned,
):
    """Back a model folder up to comma-separated destinations (s3://, oss://, hf://, modelscope://), verified."""
    params = dict(locals())
    import json
    import os

    from aptops.backup import BackupConfig
    from aptops.backup import backup_model as backup
    from aptops.core.runtime import config_from_params, list_param, run_step

    config = config_from_params(BackupConfig, params)

    def work():
        out = backup(model_path, list_param(destinations), config)
        os.makedirs(result.path, exist_ok=True)
        with open(os.path.join(result.path, "backup.json"), "w", encoding="utf-8") as fh:
            json.dump({"manifest": out.manifest, "destinations": out.details["destinations"]}, fh, indent=2)
        out.raise_for_failures()
        return out

    run_step("backup", "backup", work, params)


@stage_component("backup", pipeline="deploy", config="aptops.backup:BackupConfig", tuned=("max_retries",))
def backup_artifact(
    model: Input[Model],
    destinations: str,
    metrics: Output[Metrics],
    **tuned,
):
    """Back up a model artifact produced earlier in the pipeline (a GGUF folder, a trained model)."""
    params = dict(locals())
    from aptops.backup import BackupConfig
    from aptops.backup import backup_model as backup
    from aptops.core.runtime import config_from_params, list_param, run_step

    config = config_from_params(BackupConfig, params)
    run_step("backup", "backup", lambda: backup(model.path, list_param(destinations), config).raise_for_failures(),
             params)
