"""The backup stage (old plugin: Cloud Storage, ``cloud_storage``, category storage, priority 700).

Verified, manifest-committed backup and restore: S3, S3-compatible stores, Alibaba OSS and Hugging Face Hub
repos (one commit and one tag per backup) and ModelScope repos (files, then the manifest, then a tag).
Try it on a CPU: ``aptops backup MODEL_DIR --to s3://bucket/prefix`` with ``AWS_ENDPOINT_URL`` set. A backed-up
model is registered in Kubeflow Model Registry with :func:`register_model_version` (``aptops registry add``).
"""

from aptops.backup.engine import BackupConfig, BackupResult, DestinationResult, backup_model, restore_model
from aptops.backup.hf import list_backups
from aptops.backup.legacy import (
    backup_to_huggingface,
    backup_to_modelscope,
    backup_to_oss,
    backup_to_s3,
    restore_from_cloud,
    restore_from_oss,
    restore_from_s3,
)
from aptops.backup.registry import RegistryConfig, register_model_version

__all__ = [
    "BackupConfig",
    "BackupResult",
    "DestinationResult",
    "RegistryConfig",
    "backup_model",
    "backup_to_huggingface",
    "backup_to_modelscope",
    "backup_to_oss",
    "backup_to_s3",
    "list_backups",
    "register_model_version",
    "restore_from_cloud",
    "restore_from_oss",
    "restore_from_s3",
    "restore_model",
]
