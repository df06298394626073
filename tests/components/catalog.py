"""Every KFP component the project defines, found by walking ``aptops_components``: tests that must cover all of
them read this list, so a new component cannot slip past them."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import aptops_components


def all_components() -> list[tuple[str, str, Any]]:
    """``(module, name, component)`` of every component, module by module, name by name."""
    found = []
    for info in pkgutil.iter_modules(aptops_components.__path__):
        module = importlib.import_module(f"aptops_components.{info.name}")
        for name, obj in sorted(vars(module).items()):
            fn = getattr(obj, "python_func", None)
            if fn is not None and fn.__module__ == module.__name__:
                found.append((info.name, name, obj))
    return found
