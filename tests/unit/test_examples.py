"""The shipped example configs (``examples/<stage>.yaml``) are the documentation of every config field: each
loads, equals the config's defaults (so no documented default is wrong), names every field, nested ones
included, and says what each does."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from aptops.core.config import load_config
from aptops.stages import STAGES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example_classes() -> dict[str, type]:
    from aptops.backup import BackupConfig
    from aptops.data import CleanConfig
    from aptops.debug import DebugStageConfig
    from aptops.distill import DistillConfig
    from aptops.eval import HarnessConfig
    from aptops.export import ExportConfig
    from aptops.multimodal import MultimodalConfig
    from aptops.prune import PruneConfig
    from aptops.train import TrainConfig

    # the config each stage's main CLI command takes (debug run takes the debug stage's own)
    return {"data": CleanConfig, "train": TrainConfig, "distill": DistillConfig, "prune": PruneConfig,
            "multimodal": MultimodalConfig, "debug": DebugStageConfig, "eval": HarnessConfig, "export": ExportConfig,
            "backup": BackupConfig}


def _fields(cls: type, prefix: str = "") -> set[str]:
    hints = typing.get_type_hints(cls)
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= _fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


def _keys(node: dict, prefix: str = "", nested: frozenset[str] = frozenset()) -> set[str]:
    return {k for key, value in node.items() for k in (
        _keys(value, f"{prefix}{key}.", nested) if f"{prefix}{key}" in nested else {prefix + key})}


def test_every_stage_with_a_config_ships_an_example():
    assert {p.stem for p in EXAMPLES.glob("*.yaml")} - {"cluster"} == set(_example_classes())  # cluster: its own tests
    assert {s.name for s in STAGES if s.config} - {"hub"} <= set(_example_classes())


@pytest.mark.parametrize("stage", sorted(_example_classes()))
def test_example_loads_at_the_defaults_and_documents_every_field(stage):
    cls = _example_classes()[stage]
    path = EXAMPLES / f"{stage}.yaml"
    assert load_config(cls, path) == cls()
    hints = typing.get_type_hints(cls)
    nested = frozenset(f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name]))
    assert _keys(yaml.safe_load(path.read_text(encoding="utf-8")), nested=nested) == _fields(cls)
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"{path.name}:{i + 1} {line!r} has no comment above it"
