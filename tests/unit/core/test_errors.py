from __future__ import annotations

import pytest

from aptops.core import errors


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.ConfigError, ValueError),
        (errors.LocationError, ValueError),
        (errors.ArtifactNotFoundError, FileNotFoundError),
        (errors.InvalidArtifactError, ValueError),
        (errors.StorageError, OSError),
        (errors.MissingDependencyError, ImportError),
        (errors.PluginError, LookupError),
        (errors.PipelineError, RuntimeError),
    ],
)
def test_each_error_is_also_its_builtin(cls, builtin):
    assert issubclass(cls, errors.AptopsError)
    assert issubclass(cls, builtin)


def test_storage_error_carries_uri_and_provider():
    exc = errors.StorageError("upload failed", uri="s3://b/k", provider="s3")
    assert (exc.uri, exc.provider) == ("s3://b/k", "s3")
    with pytest.raises(OSError, match="upload failed"):
        raise exc


def test_require_names_the_extra():
    from aptops.core.deps import require

    with pytest.raises(errors.MissingDependencyError, match=r"quantize needs .*definitely_not_a_module_xyz.*pip install 'aptops\[export\]'"):
        require("definitely_not_a_module_xyz", extra="export", feature="quantize")
