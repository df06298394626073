"""Text cleaning strategies.

- ``basic``: repair mojibake and broken encodings (ftfy), strip terminal escapes, control and other
  invisible characters, remove URLs and e-mail addresses, normalise whitespace.
- ``aggressive``: basic, then lower-case, keep only letters and digits, remove English stop words.
- ``chinese``: basic, then Traditional to Simplified (OpenCC), remove punctuation, segment and POS-tag
  (jieba), drop stop words and particles; the result is space-separated words.
- ``code``: remove comments with a real lexer (pygments: string literals, shebangs and preprocessor lines
  survive), expand tabs, strip trailing spaces, drop blank lines; indentation is kept.

``custom_rules`` run last, in order, for every strategy: ``(regex, replacement)`` replaces; ``(regex, None)``
is a filter: a text that matches is dropped (``clean_text`` returns ``""``, the dataset form drops the row).

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

STRATEGIES = ("basic", "aggressive", "chinese", "code")
# jieba POS flags of words that carry no content: particles (u*), modal particles (y), interjections (e),
# onomatopoeia (o), punctuation and non-morphemes (x, w).
_EMPTY_POS = ("u", "y", "e", "o", "x", "w")
_NOT_WORD = re.compile(r"[^\w]+|_+")

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
    stopwords: int = 0
    comments: int = 0
    punctuation: int = 0
    traditional_converted: int = 0
    encoding_fixed: bool = False
    custom_rules: int = 0
    filtered: bool = False


def _keep_char(ch: str) -> bool:
    if ch in "\n\t":
        return True
    cat = unicodedata.category(ch)
    # Cc control, Cf format (zero-width, BOM, bidi marks), Co private use, Cs surrogates, Cn unassigned.
    return cat[0] != "C"


def compile_rules(
    custom_rules: Sequence[tuple[str, str | None]] | None,
) -> list[tuple[re.Pattern[str], str | None]]:
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
            compiled.append((re.compile(pattern), None if repl is None else str(repl)))
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
    *,
    language: str | None = None,
) -> tuple[str, CleanStats]:
    """Clean ``text`` and report what changed; see :func:`clean_text`."""
    check_choice("strategy", strategy, STRATEGIES)
    if not isinstance(text, str):
        raise ConfigError(f"text must be a string, got {type(text).__name__}", field="text")
    rules = (
        list(custom_rules)  # type: ignore[arg-type]
        if custom_rules and isinstance(custom_rules[0][0], re.Pattern)
        else compile_rules(custom_rules)  # type: ignore[arg-type]
    )
    counts: dict[str, int] = {}
    if strategy == "code":
        out = _clean_code(text, language, counts)
    else:
        out = _clean_basic(text, counts)
        if strategy == "aggressive":
            out = _clean_aggressive(out, counts)
        elif strategy == "chinese":
            out = _clean_chinese(out, counts)
    n_custom = 0
    for pattern, repl in rules:
        if repl is None:  # a filter rule: the whole text goes
            if pattern.search(out):
                return "", CleanStats(custom_rules=n_custom + 1, filtered=True, **counts)
            continue
        out, n = pattern.subn(repl, out)
        n_custom += n
    if n_custom and strategy != "code":
        out = _normalise_space(out)
    return out, CleanStats(custom_rules=n_custom, **counts)


def _clean_basic(text: str, counts: dict[str, int]) -> str:
    ftfy = require("ftfy", extra="data", feature="clean_text")
    text, counts["terminal_escapes"] = _TERMINAL_ESCAPE.subn("", text)
    # ftfy repairs mojibake (UTF-8 read as Latin-1/cp1252, which leaves C1 controls that must survive
    # until then), HTML entities in plain text, and NFC-normalises. Full-width characters and curly
    # quotes are kept: CJK punctuation is full-width by design, and folding typography is a style
    # decision for the stricter strategies. Control characters are counted below.
    fixed = ftfy.fix_text(
        text, normalization="NFC", fix_character_width=False, uncurl_quotes=False, remove_control_chars=False,
        remove_terminal_escapes=False,
    )
    counts["encoding_fixed"] = fixed != text
    fixed = _BACKSPACE_OVERSTRIKE.sub("", fixed)
    fixed = fixed.replace("\r\n", "\n").replace("\r", "\n")
    kept = "".join(ch for ch in fixed if _keep_char(ch))
    counts["control_chars"] = len(fixed) - len(kept)
    kept, counts["urls"] = _URL.subn(" ", kept)
    kept, counts["emails"] = _EMAIL.subn(" ", kept)
    return _normalise_space(kept)


def _normalise_space(text: str) -> str:
    text = _HSPACE.sub(" ", text)
    text = _SPACE_AROUND_NL.sub("\n", text)
    return _MANY_NL.sub("\n\n", text).strip()


def _clean_aggressive(text: str, counts: dict[str, int]) -> str:
    from aptops.data.resources import stopwords

    stop = stopwords("en")
    words = [w for w in _NOT_WORD.split(text.lower()) if w]
    kept = [w for w in words if w not in stop]
    counts["stopwords"] = len(words) - len(kept)
    return " ".join(kept)


def _clean_chinese(text: str, counts: dict[str, int]) -> str:
    from aptops.data.resources import jieba_posseg, opencc, stopwords

    simplified = opencc("t2s").convert(text)
    counts["traditional_converted"] = sum(a != b for a, b in zip(text, simplified, strict=False))
    no_punct = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in simplified)
    counts["punctuation"] = sum(1 for ch in simplified if unicodedata.category(ch)[0] in "PS")
    stop = stopwords("zh")
    words, dropped = [], 0
    for pair in jieba_posseg().cut(no_punct):
        word, flag = pair.word.strip(), pair.flag
        if not word:
            continue
        if word in stop or flag.startswith(_EMPTY_POS):
            dropped += 1
            continue
        words.append(word)
    counts["stopwords"] = dropped
    return " ".join(words)


def _clean_code(text: str, language: str | None, counts: dict[str, int]) -> str:
    from aptops.data.code import strip_comments

    text = text.replace("\r\n", "\n").replace("\r", "\n")
    code, counts["comments"], in_string = strip_comments(text, language)
    kept = []
    for i, line in enumerate(code.split("\n")):
        starts_in_string = (i - 1) in in_string
        if not starts_in_string:
            indent = len(line) - len(line.lstrip(" \t"))
            line = line[:indent].expandtabs(4) + line[indent:]
            if not line.strip():
                continue  # a blank line, or one that held only a comment
        if i not in in_string:
            line = line.rstrip()
        kept.append(line)
    return "\n".join(kept).strip("\n")


def clean_text(
    text: str,
    strategy: str = "basic",
    custom_rules: Sequence[tuple[str, str]] | None = None,
    *,
    language: str | None = None,
) -> str:
    """Clean one text.

    Args:
        text: the raw text.
        strategy: ``basic``, ``aggressive``, ``chinese`` or ``code`` (see the module docstring).
        custom_rules: extra ``(regex, replacement)`` pairs applied after the strategy's own steps, in
            order; a ``None`` replacement makes the rule a filter (a match empties the text).
        language: for ``code``, the pygments language name (``python``, ``c``, ``cpp``, ``bash`` ...);
            ``None`` guesses it from the text.

    Returns:
        The cleaned text (possibly empty).

    Raises:
        ConfigError: unknown strategy or code language, a non-string text or an invalid rule.
    """
    return clean_text_with_stats(text, strategy, custom_rules, language=language)[0]


def summarize(stats: Sequence[CleanStats]) -> dict[str, float]:
    """Add up per-text stats into dataset-level counts."""
    total: Counter[str] = Counter()
    for s in stats:
        total["urls_removed"] += s.urls
        total["emails_removed"] += s.emails
        total["terminal_escapes_removed"] += s.terminal_escapes
        total["control_chars_removed"] += s.control_chars
        total["stopwords_removed"] += s.stopwords
        total["comments_removed"] += s.comments
        total["punctuation_removed"] += s.punctuation
        total["traditional_converted"] += s.traditional_converted
        total["encoding_fixed"] += int(s.encoding_fixed)
        total["custom_rule_hits"] += s.custom_rules
        total["filtered_by_rule"] += int(s.filtered)
    return {k: float(v) for k, v in total.items()}
