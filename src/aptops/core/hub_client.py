"""One place that talks to a Hugging Face Hub: endpoint, token, repo ids, and what a failure means.

The endpoint is read when a call is made (``HF_ENDPOINT``, else huggingface.co), so a mirror or a test
server can be chosen without re-importing anything. Tokens come from the ``token`` argument or the
client's own chain (``HF_TOKEN``, the saved login); they are never logged and are scrubbed from every
message this module raises.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, ConfigError, StorageError

_hub = require("huggingface_hub", extra="hub", feature="talking to the Hugging Face Hub")
_hub_errors = require("huggingface_hub.errors", extra="hub", feature="talking to the Hugging Face Hub")
_hub_utils = require("huggingface_hub.utils", extra="hub", feature="talking to the Hugging Face Hub")

DEFAULT_ENDPOINT = "https://huggingface.co"
# huggingface_hub's client waits forever by default: a Hub (or mirror) that accepts the connection and never
# answers would hang a stage with no word. Every request now gives up after this long without a byte (a
# download that keeps receiving is not cut); HF_HUB_DOWNLOAD_TIMEOUT changes it.
NETWORK_TIMEOUT_S = 60.0


def _client_with_timeouts() -> Any:
    from huggingface_hub.utils import _http

    client = _http.default_client_factory()
    try:
        seconds = float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or NETWORK_TIMEOUT_S)
    except ValueError:
        seconds = NETWORK_TIMEOUT_S

    def bound(request: Any) -> None:
        # the client's API calls pass timeout=None per request, which beats a client default: the request's
        # own timeouts are bounded here, after it is built and before it is sent
        given = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {k: given.get(k) if given.get(k) is not None else seconds
                                         for k in ("connect", "read", "write", "pool")}

    client.event_hooks["request"] = [*client.event_hooks["request"], bound]
    return client


_hub.set_client_factory(_client_with_timeouts)


def endpoint() -> str:
    """The Hub URL in use now: ``HF_ENDPOINT`` if set, else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for the local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def api(token: str | None = None) -> Any:
    """An ``HfApi`` bound to :func:`endpoint` and ``token`` (``None``: the client's own token chain)."""
    return _hub.HfApi(endpoint=endpoint(), token=token)


def check_repo_id(repo_id: str, *, what: str = "repo id") -> str:
    """Return ``repo_id`` if the Hub would accept it, else raise a :class:`ConfigError` that says why."""
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ConfigError(f"{what} is empty; give it as 'namespace/name' (e.g. my-org/my-model)",
                          field="repo_id", value=repo_id)
    try:
        _hub_utils.validate_repo_id(repo_id)
    except _hub_errors.HFValidationError as exc:
        raise ConfigError(f"{what} {repo_id!r} is not a valid Hub repo id: {exc}. Use 'namespace/name' with "
                          "letters, digits, '-', '_' and '.' only", field="repo_id", value=repo_id) from None
    if "/" not in repo_id:
        raise ConfigError(f"{what} {repo_id!r} has no namespace; give it as 'namespace/name' (your user or "
                          "organisation, e.g. my-org/my-model)", field="repo_id", value=repo_id)
    return repo_id


def scrub(text: str, token: str | None) -> str:
    """``text`` with every token-looking secret removed (the given one and any ``hf_...`` string)."""
    import re

    if token:
        text = text.replace(token, "***")
    env_token = os.environ.get("HF_TOKEN")
    if env_token:
        text = text.replace(env_token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{10,}", "hf_***", text)


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def server_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    message = headers.get("X-Error-Message") if hasattr(headers, "get") else None
    return message or str(exc).splitlines()[0]


@contextlib.contextmanager
def translate_errors(what: str, repo_id: str, token: str | None = None, *, repo_type: str = "model") -> Iterator[None]:
    """Turn the client's exceptions into aptops errors that name the problem and the fix."""
    where = endpoint()
    try:
        yield
    except _hub_errors.HFValidationError as exc:
        raise ConfigError(scrub(f"{what}: {exc}", token), field="repo_id", value=repo_id) from None
    except _hub_errors.LocalEntryNotFoundError as exc:
        raise ArtifactNotFoundError(scrub(
            f"{what}: {repo_id!r} is not in the local cache and the Hub could not be asked ({exc}); "
            "unset HF_HUB_OFFLINE or download it once while online", token)) from None
    except _hub_errors.RevisionNotFoundError as exc:
        raise ArtifactNotFoundError(scrub(
            f"{what}: {repo_type} repo {repo_id!r} on {where} has no such revision ({server_message(exc)}); "
            "list its branches and tags with `huggingface-cli repo-refs` or use 'main'", token)) from None
    except _hub_errors.EntryNotFoundError as exc:
        raise ArtifactNotFoundError(scrub(f"{what}: a file is missing in {repo_id!r} on {where}: "
                                          f"{server_message(exc)}", token)) from None
    except _hub_errors.RepositoryNotFoundError:
        raise ArtifactNotFoundError(scrub(
            f"{what}: {repo_type} repo {repo_id!r} was not found on {where}; check the name, and if it is "
            "private or gated pass a token with read access (HF_TOKEN)", token)) from None
    except _hub_errors.HfHubHTTPError as exc:
        code = status_of(exc)
        if code == 401:
            hint = "the Hub refused the token (401); set HF_TOKEN to a valid token with the rights needed"
        elif code == 403:
            hint = "the token may not do this (403); use a token with write access to that namespace"
        else:
            hint = f"the Hub answered HTTP {code}"
        raise StorageError(scrub(f"{what} {repo_id!r} on {where}: {hint}: {server_message(exc)}", token)) from None
    except Exception as exc:
        network = isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "requests")
        if not network or isinstance(exc, StorageError | ArtifactNotFoundError | ConfigError):
            raise
        raise StorageError(scrub(f"{what} {repo_id!r}: cannot reach {where} ({type(exc).__name__}: {exc}); "
                                 "check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache",
                                 token)) from None
