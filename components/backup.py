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


@stage_component("backup", pipeline="lifecycle", config="aptops.backup.registry:RegistryConfig",
                 tuned=("address", "author"))
def register_model(
    model: Input[Model],
    destinations: str,
    name: str,
    version: str,
    run_name: str,
    registration: Output[Artifact],
    metrics: Output[Metrics],
    evaluation: Input[Artifact] = None,
    **tuned,
):
    """Register a model backed up to destinations (the first is the artifact URI) in Kubeflow Model Registry, with
    its format, metrics, the evaluation's results, its lineage and this run as provenance; the same content twice
    adds nothing. The registry token comes from MODEL_REGISTRY_TOKEN (the cluster file's credentials.registry)."""
    params = dict(locals())
    import json
    import os

    from aptops.backup.registry import Provenance, RegistryConfig, register_model_version
    from aptops.core.runtime import config_from_params, list_param, run_step

    config = config_from_params(RegistryConfig, params)
    uris = list_param(destinations)
    provenance = Provenance.from_environment(params.get("run_id", ""), run_name)

    def work():
        if not uris:
            from aptops.core.errors import ConfigError

            raise ConfigError("register_model needs the destinations the model was backed up to", field="destinations")
        out = register_model_version(model.path, uris[0], name=name, version=version, config=config,
                                     evaluation=evaluation.path if evaluation is not None else None,
                                     provenance=provenance)
        os.makedirs(registration.path, exist_ok=True)
        with open(os.path.join(registration.path, "registration.json"), "w", encoding="utf-8") as fh:
            json.dump(out.details["registration"], fh, indent=2)
        return out

    result = run_step("backup", "registry", work, params)
    reg = result.details["registration"]
    registration.metadata.update({"name": reg["name"], "version": reg["version"], "uri": reg["uri"],
                                  "created": reg["created"]})
