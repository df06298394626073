"""Optional imports behind one helper, so a missing extra fails with the exact install command."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from aptops.core.errors import MissingDependencyError


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or explain how to get it.

    Args:
        module: the importable module name (``"pyarrow.parquet"``).
        extra: the aptops extra that provides it (``"data"``).
        feature: what the caller was about to do, for the message.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the Python module {module!r}, which is not installed: "
            f"pip install 'aptops[{extra}]' to use it"
        ) from exc


def load_object(ref: str) -> Any:
    """The object a ``module:attribute`` reference names (a stage table's config, a command's function),
    imported now: the places that name code as text load it only when it is used."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
