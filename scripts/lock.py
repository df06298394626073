"""The lock: one set of exact versions for setup, CI and every stage image (``make lock`` refreshes it).

``requirements/lock.txt`` is pip-tools' hashed lock of ``aptops[all,test]`` plus ``requirements/pins.in`` (torch's
CPU build, llama-cpp-python) on Python 3.11 / Linux x86-64; ``make setup`` installs it with ``--require-hashes``.
``requirements/constraints.txt`` is the same versions without hashes, for the images (pip takes no hashes in a
constraints file, and a GPU image's torch is the CUDA build of the locked version: torch is pinned without its
``+cpu`` label there). Its first line records a digest of what the lock was made from (pyproject.toml's
dependency tables and pins.in), so a change to either without ``make lock`` fails a test.

    python3 scripts/lock.py constraints     # tidy lock.txt, write constraints.txt from it (make lock runs it)
    python3 scripts/lock.py check           # exit 1 if pyproject.toml / pins.in changed since the lock
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
PINS = ROOT / "requirements" / "pins.in"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def inputs_digest(root: Path = ROOT) -> str:
    """SHA-256 of what the lock is made from: pyproject's requires-python, dependencies, extras, and pins.in."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = [line.split("#")[0].strip() for line in (root / "requirements" / "pins.in").read_text().splitlines()]
    payload = {"requires-python": project.get("requires-python"), "dependencies": project.get("dependencies", []),
               "optional-dependencies": project.get("optional-dependencies", {}), "pins": [p for p in pins if p]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def pins(lock: Path = LOCK) -> dict[str, str]:
    """``{normalised name: version}`` of every package the lock pins."""
    out = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = _PIN.match(line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def recorded_digest(constraints: Path = CONSTRAINTS) -> str:
    first = constraints.read_text(encoding="utf-8").splitlines()[0]
    return first.removeprefix("# inputs-sha256: ").strip()


def tidy(lock: Path = LOCK) -> None:
    """Drop what pip-compile writes that is not a dependency: aptops itself (its extras name it; setup installs
    it editable, the images from the build context) and this machine's --find-links."""
    out, skip = [], False
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.startswith(("# WARNING: pip install will require", "# Consider using a hashable URL", "--find-links")):
            continue
        if line.startswith("aptops @ "):
            skip = True
            continue
        if skip and line.startswith(" "):
            continue
        skip = False
        out.append(line)
    lock.write_text("\n".join(out) + "\n", encoding="utf-8")


def write_constraints() -> None:
    lines = [f"# inputs-sha256: {inputs_digest()}",
             "# The versions of requirements/lock.txt without hashes, for the stage images (pip -c); made by make lock.",
             "# torch without its local label: the CPU images install the +cpu build, the GPU images the CUDA build."]
    for name, version in sorted(pins().items()):
        if name == "aptops":
            continue
        lines.append(f"{name}=={version.split('+')[0] if name == 'torch' else version}")
    CONSTRAINTS.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    if argv[:1] == ["constraints"]:
        tidy()
        write_constraints()
        print(f"wrote {CONSTRAINTS.relative_to(ROOT)} ({len(pins())} pins)")
        return 0
    if argv[:1] == ["check"]:
        if recorded_digest() != inputs_digest():
            print("pyproject.toml or requirements/pins.in changed since the lock was made: run make lock",
                  file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
