"""Text cleaning strategies.

``basic`` (this module): repair mojibake and broken encodings (ftfy), strip terminal escapes, control
and other invisible characters, remove URLs and e-mail addresses, normalise whitespace. The other strategies of
the old Data Processors plugin (``aggressive``, ``chinese``, ``code``) come with the data-stage issue.

Try it on a CPU: ``python -c "from aptops.data import clean_text; print(clean_text('Ã©tÃ©  see https://x.io'))"``
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from aptops.core.config import check_choice
from aptops.core.deps import require
from aptops.core.errors import ConfigError

STRATEGIES = ("basic",)

# URLs with a scheme or a "www." prefix; stops at whitespace and at closing brackets/quotes so the
# surrounding sentence survives. Trailing punctuation is left in the text (it belongs to the sentence).
_URL = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"'()\[\]{}]+[^\s<>\"'()\[\]{}.,;:!?]", re.IGNORECASE
)
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b"
)
_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace but newline (tabs, NBSP, ideographic space, ...)
_SPACE_AROUND_NL = re.compile(r" *\n *")
_MANY_NL = re.compile(r"\n{3,}")
# ECMA-48 escape sequences (colours, cursor moves) and OSC strings (terminal titles, hyperlinks):
# text copied from a terminal carries them; they are markup, not content.
_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_BACKSPACE_OVERSTRIKE = re.compile(r"[^\x08]\x08")  # nroff-style bold/underline: "_\bA" -> "A"


@dataclass(frozen=True)
class CleanStats:
    """What one call of :func:`clean_text_with_stats` changed."""

    urls: int = 0
    emails: int = 0
    terminal_escapes: int = 0
    control_chars: int = 0
    encoding_fixed: bool = False
    custom_rules: int = 0


def _keep_char(ch: str) -> bool:
    if ch in "\n\t":
        return True
    cat = unicodedata.category(ch)
    # Cc control, Cf format (zero-width, BOM, bidi marks), Co private use, Cs surrogates, Cn unassigned.
    return cat[0] != "C"


def compile_rules(custom_rules: Sequence[tuple[str, str]] | None) -> list[tuple[re.Pattern[str], str]]:
    """Compile ``(pattern, replacement)`` pairs, naming the rule that fails."""
    compiled = []
    for i, rule in enumerate(custom_rules or ()):
        if not isinstance(rule, list | tuple) or len(rule) != 2:
            raise ConfigError(
                f"custom_rules[{i}]={rule!r} must be a [pattern, replacement] pair",
                field=f"custom_rules[{i}]", value=rule,
            )
        pattern, repl = rule
        try:
            compiled.append((re.compile(pattern), str(repl)))
        except re.error as exc:
            raise ConfigError(
                f"custom_rules[{i}] pattern {pattern!r} is not a valid regular expression: {exc}",
                field=f"custom_rules[{i}]", value=pattern,
            ) from exc
    return compiled


def clean_text_with_stats(
    text: str,
    strategy: str = "basic",
    custom_rules: Sequence[tuple[str, str]] | Sequence[tuple[re.Pattern[str], str]] | None = None,
) -> tuple[str, CleanStats]:
    """Clean ``text`` and report what changed; see :func:`clean_text`."""
    check_choice("strategy", strategy, STRATEGIES)
    if not isinstance(text, str):
        raise ConfigError(f"text must be a string, got {type(text).__name__}", field="text")
    ftfy = require("ftfy", extra="data", feature="clean_text")
    rules = (
        list(custom_rules)  # type: ignore[arg-type]
        if custom_rules and isinstance(custom_rules[0][0], re.Pattern)
        else compile_rules(custom_rules)  # type: ignore[arg-type]
    )
    # ftfy repairs mojibake (UTF-8 read as Latin-1/cp1252, which leaves C1 controls that must survive
    # until then), HTML entities in plain text, terminal escapes, and NFC-normalises. Full-width
    # characters and curly quotes are kept: CJK punctuation is full-width by design, and folding
    # typography is a style decision for the stricter strategies. Control characters are counted below.
    text, n_escapes = _TERMINAL_ESCAPE.subn("", text)
    fixed = ftfy.fix_text(
        text, normalization="NFC", fix_character_width=False, uncurl_quotes=False, remove_control_chars=False,
        remove_terminal_escapes=False,
    )
    encoding_fixed = fixed != text
    fixed = _BACKSPACE_OVERSTRIKE.sub("", fixed)
    fixed = fixed.replace("\r\n", "\n").replace("\r", "\n")
    kept = "".join(ch for ch in fixed if _keep_char(ch))
    control = len(fixed) - len(kept)
    kept, n_urls = _URL.subn(" ", kept)
    kept, n_emails = _EMAIL.subn(" ", kept)
    n_custom = 0
    for pattern, repl in rules:
        kept, n = pattern.subn(repl, kept)
        n_custom += n
    kept = _HSPACE.sub(" ", kept)
    kept = _SPACE_AROUND_NL.sub("\n", kept)
    kept = _MANY_NL.sub("\n\n", kept).strip()
    return kept, CleanStats(n_urls, n_emails, n_escapes, control, encoding_fixed, n_custom)


def clean_text(
    text: str, strategy: str = "basic", custom_rules: Sequence[tuple[str, str]] | None = None
) -> str:
    """Clean one text.

    Args:
        text: the raw text.
        strategy: ``basic`` (repair encodings, strip control characters, remove URLs and e-mail
            addresses, normalise whitespace).
        custom_rules: extra ``(regex, replacement)`` pairs applied after the strategy's own steps.

    Returns:
        The cleaned text (possibly empty).

    Raises:
        ConfigError: unknown strategy, a non-string text or an invalid rule.
    """
    return clean_text_with_stats(text, strategy, custom_rules)[0]


def summarize(stats: Sequence[CleanStats]) -> dict[str, float]:
    """Add up per-text stats into dataset-level counts."""
    total: Counter[str] = Counter()
    for s in stats:
        total["urls_removed"] += s.urls
        total["emails_removed"] += s.emails
        total["terminal_escapes_removed"] += s.terminal_escapes
        total["control_chars_removed"] += s.control_chars
        total["encoding_fixed"] += int(s.encoding_fixed)
        total["custom_rule_hits"] += s.custom_rules
    return {k: float(v) for k, v in total.items()}
