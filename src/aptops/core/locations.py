"""Storage locations: a path or a URI, parsed and validated before any transfer starts.

Supported: plain paths and ``file://``, ``s3://bucket/prefix``, ``oss://bucket/prefix``,
``hf://org/repo`` (``hf://datasets/org/repo``, ``@revision`` optional) and ``modelscope://org/repo``.
Credentials never belong in a location: a URI carrying ``user:secret@`` is refused, and the message
shows it with the secret redacted. The backends that move bytes come with the backup stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from aptops.core.errors import LocationError

Scheme = Literal["file", "s3", "oss", "hf", "modelscope"]
SCHEMES: tuple[str, ...] = ("file", "s3", "oss", "hf", "modelscope")

# S3 bucket naming rules (AWS): 3-63 chars, lower-case letters, digits, dots and hyphens,
# starting and ending with a letter or digit, not an IP address.
_S3_BUCKET = re.compile(r"^(?!\d+\.\d+\.\d+\.\d+$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# OSS bucket naming rules (Alibaba): 3-63 chars, lower-case letters, digits and hyphens only.
_OSS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
# Hub repo ids: namespace/name, letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 chars each.
_REPO_PART = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HF_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


@dataclass(frozen=True)
class Location:
    """A parsed storage location.

    Attributes:
        scheme: ``file``, ``s3``, ``oss``, ``hf`` or ``modelscope``.
        bucket: the bucket (s3, oss) or the repo id ``org/name`` (hf, modelscope); empty for files.
        key: the object prefix inside the bucket or repo (no leading slash); the path for files.
        revision: a branch, tag or commit (hf, modelscope), when given with ``@``.
        repo_type: ``model``, ``dataset`` or ``space`` for hf.
    """

    scheme: str
    bucket: str = ""
    key: str = ""
    revision: str | None = None
    repo_type: str = "model"

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def path(self) -> Path:
        """The local path of a ``file`` location."""
        if not self.is_local:
            raise LocationError(f"{self.uri} is not a local path", uri=self.uri)
        return Path(self.key)

    @property
    def uri(self) -> str:
        if self.scheme == "file":
            return Path(self.key).resolve().as_uri() if self.key else "file://"
        repo = self.bucket
        if self.scheme == "hf" and self.repo_type != "model":
            repo = f"{self.repo_type}s/{repo}"
        rev = f"@{self.revision}" if self.revision else ""
        key = f"/{self.key}" if self.key else ""
        return f"{self.scheme}://{repo}{rev}{key}"

    def join(self, *parts: str) -> Location:
        """A location under this one (``s3://b/p`` joined with ``x`` is ``s3://b/p/x``)."""
        if self.is_local:
            return Location("file", key=str(Path(self.key, *parts)))
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p and p.strip("/"))
        return Location(self.scheme, self.bucket, key, self.revision, self.repo_type)

    def __str__(self) -> str:
        return self.uri


def redact(uri: str) -> str:
    """Hide any ``user:password@`` part and secret-looking query values of a URI."""
    uri = re.sub(r"(://)[^/@\s]*@", r"\1***@", uri)
    return re.sub(
        r"(?i)([?&](?:token|secret|signature|password|key|x-amz-[a-z-]+)=)[^&]*", r"\1***", uri
    )


def parse_location(value: str | Path) -> Location:
    """Parse a path or URI into a :class:`Location`.

    Args:
        value: a local path (relative or absolute), a ``file://`` URI, or a cloud URI.

    Returns:
        The parsed location.

    Raises:
        LocationError: the value is empty, has an unknown scheme, carries credentials, or names an
            invalid bucket or repo. The message shows the (redacted) value and the expected form.
    """
    if isinstance(value, Path):
        return Location("file", key=str(value))
    if not isinstance(value, str) or not value.strip():
        raise LocationError(
            "location is empty: give a path or a URI such as s3://bucket/prefix", uri=str(value)
        )
    text = value.strip()
    if any(ch in text for ch in "\x00\n\r"):
        raise LocationError(f"location {redact(text)!r} contains control characters", uri=redact(text))
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", text)
    if not match:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/[^/]", text) and not re.match(r"^[A-Za-z]:[\\/]", text):
            raise LocationError(
                f"location {redact(text)!r} looks like a URI with one slash: write scheme://... "
                f"(supported schemes: {', '.join(SCHEMES)})",
                uri=redact(text),
            )
        return Location("file", key=text)
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise LocationError(
            f"location {redact(text)!r} has unsupported scheme {scheme!r}: use a local path or one of "
            f"{', '.join(s + '://' for s in SCHEMES)}",
            uri=redact(text),
        )
    parts = urlsplit(text)
    if "@" in (parts.netloc or ""):
        raise LocationError(
            f"location {redact(text)!r} carries credentials: remove them and set them in the environment "
            "(AWS_ACCESS_KEY_ID / OSS_ACCESS_KEY_ID / HF_TOKEN / MODELSCOPE_API_TOKEN)",
            uri=redact(text),
        )
    if parts.query or parts.fragment:
        raise LocationError(
            f"location {redact(text)!r} has a query or fragment, which locations do not use", uri=redact(text)
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise LocationError(
                f"location {redact(text)!r}: file URIs name no host; write file:///absolute/path",
                uri=redact(text),
            )
        path = unquote(parts.path)
        if not path:
            raise LocationError(f"location {text!r} has no path: write file:///absolute/path", uri=text)
        return Location("file", key=path)
    if scheme in {"s3", "oss"}:
        return _parse_bucket(scheme, text, parts.netloc, parts.path)
    return _parse_repo(scheme, text, match.group(2))


def _parse_bucket(scheme: str, text: str, bucket: str, path: str) -> Location:
    rule = _S3_BUCKET if scheme == "s3" else _OSS_BUCKET
    if not bucket:
        raise LocationError(f"location {text!r} has no bucket: write {scheme}://bucket/prefix", uri=text)
    if not rule.fullmatch(bucket) or (scheme == "s3" and ".." in bucket):
        allowed = (
            "3-63 lower-case letters, digits, dots or hyphens"
            if scheme == "s3"
            else "3-63 lower-case letters, digits or hyphens"
        )
        raise LocationError(
            f"location {text!r}: {bucket!r} is not a valid {scheme.upper()} bucket name ({allowed}, "
            "starting and ending with a letter or digit)",
            uri=text,
        )
    key = unquote(path).lstrip("/")
    if any(part in {".", ".."} for part in key.split("/")):
        raise LocationError(f"location {text!r}: '.' and '..' are not allowed in object keys", uri=text)
    return Location(scheme, bucket=bucket, key=key.rstrip("/"))


def _parse_repo(scheme: str, text: str, rest: str) -> Location:
    segments = [s for s in rest.split("/") if s != ""]
    repo_type = "model"
    if scheme == "hf" and segments and segments[0] in _HF_REPO_TYPES:
        repo_type = _HF_REPO_TYPES[segments[0]]
        segments = segments[1:]
    if len(segments) < 2:
        raise LocationError(
            f"location {text!r} must name a repo as {scheme}://org/name[@revision][/path]", uri=text
        )
    org, name = segments[0], segments[1]
    revision = None
    if "@" in name:
        name, _, revision = name.partition("@")
        if not revision:
            raise LocationError(f"location {text!r} has an empty revision after '@'", uri=text)
    for part, label in ((org, "organisation"), (name, "repo name")):
        if not _REPO_PART.fullmatch(part):
            raise LocationError(
                f"location {text!r}: {part!r} is not a valid {label} (letters, digits, '-', '_', '.', "
                "at most 96 characters, no '--' or '..')",
                uri=text,
            )
    key = "/".join(unquote(s) for s in segments[2:])
    if any(part in {".", ".."} for part in key.split("/")):
        raise LocationError(f"location {text!r}: '.' and '..' are not allowed in paths", uri=text)
    return Location(scheme, bucket=f"{org}/{name}", key=key, revision=revision, repo_type=repo_type)
