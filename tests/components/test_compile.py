"""Every component of every component module compiles on its own, in its stage's image, without installing kfp
at start, and ships a body that imports its stage's library (not another stage's)."""

from __future__ import annotations

import pytest
import yaml

kfp = pytest.importorskip("kfp")

import aptops_components  # noqa: E402
from aptops.stages import get_stage  # noqa: E402
from tests.components.catalog import all_components  # noqa: E402

# components/<module>.py -> the stage whose image runs it (runs.py records a pipeline's outcome in the data image)
_IMAGE_OF = {"runs": "data"}


COMPONENTS = all_components()


def test_every_component_module_is_covered():
    modules = {m for m, _, _ in COMPONENTS}
    assert modules >= {"backup", "data", "debug", "distill", "export", "hub", "multimodal", "prune", "runs", "train"}


@pytest.mark.parametrize(("module", "name", "component"), COMPONENTS, ids=[f"{m}.{n}" for m, n, _ in COMPONENTS])
def test_component_compiles_into_its_stage_image(module, name, component, tmp_path):
    from kfp import compiler

    path = tmp_path / f"{name}.yaml"
    compiler.Compiler().compile(component, str(path))
    spec = yaml.safe_load(path.read_text())
    (executor,) = spec["deploymentSpec"]["executors"].values()
    container = executor["container"]
    stage = get_stage(_IMAGE_OF.get(module, module))
    assert container["image"] == f"aptops/{stage.image}:{aptops_components.DEFAULT_TAG}"
    assert "pip install" not in " ".join(container["command"])  # the image carries kfp
    body = container["command"][-1]
    assert f"def {name}(" in body
    imported = {line.split()[1].split(".")[1] for line in body.splitlines()
                if line.strip().startswith("from aptops.") and len(line.split()[1].split(".")) > 1}
    # a component imports its own stage and the shared layers (cluster: the training steps' TrainJob launch)
    assert imported <= {"core", "lm", "cluster", stage.name}, imported
