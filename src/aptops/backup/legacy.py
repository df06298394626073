"""The old Cloud Storage plugin's API (``cloud_storage``), kept for its users.

Thin wrappers with the old signatures over the stage contract in :mod:`aptops.backup.engine`:
``backup_model(model, destinations, config)`` and ``restore_model(source, *, output_dir, config)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aptops.backup.engine import BackupConfig, BackupResult, _backup_to_stores, backup_model, restore_model
from aptops.core.artifacts import StageResult

__all__ = [
    "backup_model", "backup_to_huggingface", "backup_to_modelscope", "backup_to_oss", "backup_to_s3",
    "restore_from_cloud", "restore_from_oss", "restore_from_s3",
]


def restore_from_cloud(source: str | Sequence[str], model_id: str | None, local_path: str | Path,
                       config: BackupConfig | None = None, *,
                       credentials: dict[str, str | None] | None = None) -> StageResult:
    """The old ``restore_from_cloud(source, model_id, local_path, config)``: :func:`restore_model` into
    ``local_path``, ``model_id`` a sub-path under each source."""
    return restore_model(source, output_dir=local_path, config=config, model_id=model_id, credentials=credentials)


def backup_to_s3(model_path: str | Path, bucket_name: str, s3_prefix: str = "", *,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 region_name: str | None = None, endpoint_url: str | None = None) -> BackupResult:
    """The old plugin's S3 backup: ``s3://bucket_name/s3_prefix``."""
    dest = f"s3://{bucket_name}/{s3_prefix.strip('/')}".rstrip("/")
    return backup_model(model_path, [dest], BackupConfig(endpoint_url=endpoint_url, region_name=region_name),
                        credentials={"aws_access_key_id": aws_access_key_id,
                                     "aws_secret_access_key": aws_secret_access_key})


def backup_to_oss(model_path: str | Path, bucket_name: str, oss_prefix: str = "", *,
                  access_key_id: str | None = None, access_key_secret: str | None = None,
                  endpoint: str | None = None) -> BackupResult:
    """The old plugin's OSS backup: ``oss://bucket_name/oss_prefix``."""
    dest = f"oss://{bucket_name}/{oss_prefix.strip('/')}".rstrip("/")
    return backup_model(model_path, [dest], BackupConfig(oss_endpoint=endpoint),
                        credentials={"oss_access_key_id": access_key_id, "oss_access_key_secret": access_key_secret})


def restore_from_oss(bucket_name: str, oss_prefix: str, local_path: str | Path, *,
                     access_key_id: str | None = None, access_key_secret: str | None = None,
                     endpoint: str | None = None) -> StageResult:
    """The old plugin's OSS restore."""
    src = f"oss://{bucket_name}/{oss_prefix.strip('/')}".rstrip("/")
    return restore_model(src, output_dir=local_path, config=BackupConfig(oss_endpoint=endpoint),
                         credentials={"oss_access_key_id": access_key_id, "oss_access_key_secret": access_key_secret})


def restore_from_s3(bucket_name: str, s3_prefix: str, local_path: str | Path, *,
                    aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                    region_name: str | None = None, endpoint_url: str | None = None) -> StageResult:
    """The old plugin's S3 restore."""
    src = f"s3://{bucket_name}/{s3_prefix.strip('/')}".rstrip("/")
    return restore_model(src, output_dir=local_path, config=BackupConfig(endpoint_url=endpoint_url, region_name=region_name),
                         credentials={"aws_access_key_id": aws_access_key_id,
                                      "aws_secret_access_key": aws_secret_access_key})


def backup_to_huggingface(model_path: str | Path, repo_id: str, path_in_repo: str = "", *, token: str | None = None,
                          private: bool = True, repo_type: str = "model") -> BackupResult:
    """The old plugin's Hub backup: one commit (files + manifest) to ``repo_id``, tagged ``backup-<time>``.

    The repo is created private unless ``private=False``; large files take the LFS path.
    """
    from aptops.backup.hf import HfStore

    store = HfStore(repo_id=repo_id, prefix=path_in_repo, repo_type=repo_type, token=token, private=private)
    return _backup_to_stores(model_path, [store], BackupConfig())


def backup_to_modelscope(model_path: str | Path, repo_id: str, path_in_repo: str = "", *,
                         token: str | None = None, endpoint: str | None = None) -> BackupResult:
    """The old plugin's ModelScope backup: changed files, then the manifest, then a ``backup-<time>`` tag."""
    from aptops.backup.modelscope import ModelScopeStore

    store = ModelScopeStore(repo_id=repo_id, prefix=path_in_repo, token=token, endpoint=endpoint)
    return _backup_to_stores(model_path, [store], BackupConfig())
