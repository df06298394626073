"""What a backup returns: a StageResult whose metrics are the destinations' totals, so components and the
CLI record them as they are instead of rebuilding them."""

from __future__ import annotations

import pytest

from aptops.backup import BackupResult, DestinationResult
from aptops.core.artifacts import StageResult
from aptops.core.errors import StorageError


def test_backup_result_carries_the_totals_and_names_failed_destinations():
    result = BackupResult(manifest={"files": [{"path": "a"}, {"path": "b"}], "total_bytes": 10}, destinations=[
        DestinationResult("s3://a/m", "success", bytes_sent=10, files_sent=2, retries=1),
        DestinationResult("oss://b/m", "failed", files_skipped=1, retries=3, error="AccessDenied")])
    assert isinstance(result, StageResult) and result.stage == "backup" and not result.ok
    assert result.metrics == {"bytes_sent": 10.0, "files_sent": 2.0, "files_skipped": 1.0, "retries": 4.0,
                              "destinations": 2.0, "destinations_failed": 1.0, "files": 2.0, "total_bytes": 10.0}
    assert [d["outcome"] for d in result.to_dict()["details"]["destinations"]] == ["success", "failed"]
    with pytest.raises(StorageError, match="backup failed at oss://b/m: AccessDenied") as err:
        result.raise_for_failures()
    assert err.value.uri == "oss://b/m"
    done = BackupResult(manifest={}, destinations=[DestinationResult("s3://a/m", "success")])
    done.raise_for_failures()  # nothing failed: no error
    assert done.ok and done.metrics["destinations_failed"] == 0
