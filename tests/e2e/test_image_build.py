"""Opt-in: really build the CPU stage images here and run a stage's CLI inside one.

No Docker engine runs here, so the images are built with buildah (vfs storage, chroot isolation; Debian
``buildah``). The upstream base ``python:3.11-slim`` cannot be pulled either: a Debian bookworm root made
with ``debootstrap`` (python3, pip, venv, CA certificates; pip allowed to install system-wide as in the
official image) is committed and tagged under that name, and the Dockerfiles build on it unchanged. The
build context is ``git archive HEAD``: what is committed, not what lies around.

Run: ``APTOPS_IMAGE_TESTS=1 .venv/bin/pytest -m images`` (as root or with sudo-less buildah; about 5 minutes
per image the first time, the base is reused afterwards). The export image (it compiles llama.cpp for about
10 minutes and copies the Ollama binary out of ``ollama/ollama``, which must be pullable or already in
buildah's storage) is built too with ``APTOPS_IMAGE_TESTS=export``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker.io/library/python:3.11-slim"
BASE_LABEL = "io.aptops.stand-in=2"  # bump when the stand-in's recipe changes
WANTED = os.environ.get("APTOPS_IMAGE_TESTS", "")
CPU_STAGES = ["data", "hub", "backup"] + (["export"] if WANTED == "export" else [])

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(not WANTED, reason="opt-in: APTOPS_IMAGE_TESTS=1 builds the CPU images with buildah"),
    pytest.mark.skipif(shutil.which("buildah") is None or shutil.which("debootstrap") is None,
                       reason="needs Debian buildah and debootstrap"),
    pytest.mark.timeout(3600),
]


def buildah(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(["buildah", "--storage-driver", "vfs", *args], capture_output=True, text=True, **kwargs)
    if check and run.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return run


def _has_image(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False).returncode == 0


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    """The debootstrapped stand-in for python:3.11-slim (built once, kept in buildah's storage)."""
    if _has_image(BASE):
        labels = buildah("inspect", "--type", "image", "--format", "{{.OCIv1.Config.Labels}}", BASE).stdout
        if BASE_LABEL.replace("=", ":") in labels:
            return BASE
        buildah("rmi", BASE, check=False)
    rootfs = tmp_path_factory.mktemp("base") / "rootfs"
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-pip,python3-venv,ca-certificates",
                    "bookworm", str(rootfs), "http://deb.debian.org/debian"], check=True, capture_output=True,
                   timeout=1800)
    # like the official image: pip may install into the system interpreter, `python` / `pip` on PATH
    (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
        link = rootfs / "usr/local/bin" / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    # this machine's trust store: where PyPI is reached through an intercepting proxy, its CA is in here
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_bundle.is_file():
        shutil.copyfile(host_bundle, rootfs / "etc/ssl/certs/ca-certificates.crt")
    ctr = buildah("from", "scratch").stdout.strip()
    try:
        mnt = buildah("mount", ctr).stdout.strip()
        subprocess.run(["cp", "-a", f"{rootfs}/.", mnt], check=True)
        buildah("umount", ctr)
        buildah("config", "--env", "PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin",
                "--env", "LANG=C.UTF-8", "--label", BASE_LABEL, "--cmd", "python3", ctr)
        buildah("commit", ctr, BASE)
    finally:
        buildah("rm", ctr, check=False)
    return BASE


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """The committed tree as the build context."""
    ctx = tmp_path_factory.mktemp("context")
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(ctx)], input=archive.stdout, check=True)
    return ctx


@pytest.mark.parametrize("stage", CPU_STAGES)
def test_cpu_image_builds_and_runs_its_stage(stage, base_image, context, tmp_path):
    tag = f"localhost/aptops/aptops-{stage}:test"
    pull = "--pull" if stage == "export" else "--pull-never"  # export also needs ollama/ollama
    from aptops.stages import get_stage

    row = get_stage(stage)
    # the pinned base cannot be pulled here: the debootstrapped stand-in takes its place
    build_args = [f"--build-arg={k}={v}" for k, v in {**row.build_args, "BASE": base_image}.items()]
    buildah("bud", pull, "--isolation", "chroot", "--layers=false", "-f", row.dockerfile, *build_args,
            "-t", tag, ".", cwd=context, timeout=3000)
    ctr = buildah("from", "--pull-never", tag).stdout.strip()
    try:
        user = buildah("inspect", "--format", "{{.OCIv1.Config.User}}", tag).stdout.strip()
        assert user not in ("", "0", "root")
        version = buildah("run", "--isolation", "chroot", ctr, "--", "aptops", "--version")
        assert version.stdout.startswith("aptops ")
        if stage == "data":
            sample = tmp_path / "in.txt"
            sample.write_text("Hello   world!\nHello   world!\n\u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d text\n")
            buildah("copy", "--chown", "10001:10001", ctr, str(sample), "/home/aptops/in.txt")
            buildah("run", "--isolation", "chroot", ctr, "--", "aptops", "data", "clean", "/home/aptops/in.txt",
                    "--out", "/home/aptops/out", "--set", "min_chars=1")
            result = buildah("run", "--isolation", "chroot", ctr, "--", "cat", "/home/aptops/out/result.json")
            assert '"stage": "data"' in result.stdout and '"rows_out"' in result.stdout
        else:
            # the stage library imports inside its own image (and only what its extra installed)
            module = {"hub": "aptops.hub", "backup": "aptops.backup", "export": "aptops.export"}[stage]
            buildah("run", "--isolation", "chroot", ctr, "--", "python", "-c", f"import {module}")
    finally:
        buildah("rm", ctr, check=False)
