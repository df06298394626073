"""What every detector returns: a finding that names the problem, where it is, and the fix to try."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aptops.core.errors import ConfigError

SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One diagnosis.

    Attributes:
        kind: a stable identifier (``exploding_gradients``, ``dead_neurons``, ``data_bottleneck`` ...).
        severity: ``critical`` (training is broken), ``warning`` (it is hurting), ``info``.
        message: what was seen, with the numbers.
        suggestion: the concrete change to try.
        where: the layer, module or phase it concerns (empty when global).
        step: the optimizer step it was seen at, when known.
        value: the measured value that triggered it.
    """

    kind: str
    severity: str
    message: str
    suggestion: str
    where: str = ""
    step: int | None = None
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Critical first, then warnings, then the rest; stable within a severity."""
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity) if f.severity in SEVERITIES else 99)


def select_names(available: Sequence[str], patterns: Sequence[str] | str | None, *, what: str) -> list[str]:
    """The names in ``available`` matching ``patterns`` (exact names, prefixes ending in ``.`` or globs).

    Every pattern must match something: a layer name that does not exist is an error that lists the
    closest real names, not an empty monitor that silently records nothing.
    """
    if patterns is None:
        return list(available)
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in available if n == pattern or n.startswith(pattern + ".") or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, available, n=5, cutoff=0.4) or list(available[:5])
            raise ConfigError(
                f"{what} {pattern!r} does not exist in this model; names look like: {', '.join(close)} "
                f"(exact names, a prefix, or a glob such as 'model.layers.*.mlp')",
                field="layers", value=pattern)
        chosen.extend(h for h in hits if h not in chosen)
    return chosen
