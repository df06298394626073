"""Comment removal for source code, with pygments' lexers doing the lexing.

A real lexer knows where string literals, here-documents and raw strings start and end, so a ``#`` or
``//`` inside a string survives. Shebangs (``#!``) and preprocessor lines (``#include``) are code, not
comments, and survive too. Each removed comment leaves its newlines behind so line structure holds.
"""

from __future__ import annotations

from aptops.core.deps import require
from aptops.core.errors import ConfigError

# Comment token types that are code in disguise.
_KEEP = ("Comment.Hashbang", "Comment.Preproc", "Comment.PreprocFile")


def get_lexer(language: str | None, text: str = "") -> object:
    """The pygments lexer for ``language``, or a guess from ``text`` when ``language`` is None."""
    lexers = require("pygments.lexers", extra="data", feature="code cleaning")
    util = require("pygments.util", extra="data", feature="code cleaning")
    if language:
        try:
            return lexers.get_lexer_by_name(language, stripnl=False, ensurenl=False)
        except util.ClassNotFound as exc:
            raise ConfigError(
                f"language={language!r} is not a language pygments knows: use a name such as python, c, cpp, "
                "java, javascript, go, rust, bash",
                field="language", value=language,
            ) from exc
    lexer = lexers.guess_lexer(text, stripnl=False, ensurenl=False)
    return lexer


def strip_comments(code: str, language: str | None = None) -> tuple[str, int, set[int]]:
    """Remove comments from ``code``.

    Args:
        code: the source text.
        language: a pygments language name; ``None`` guesses from the text.

    Returns:
        The code without comments, how many comments were removed, and the (0-based) numbers of the
        lines whose newline lies inside a string literal (a multi-line string or docstring): those
        lines and the ones after them are string content, which later steps must leave alone.
    """
    token_mod = require("pygments.token", extra="data", feature="code cleaning")
    keep = [token_mod.string_to_tokentype(k) for k in _KEEP]
    lexer = get_lexer(language, code)
    out: list[str] = []
    removed = 0
    line = 0
    in_string: set[int] = set()
    for ttype, value in lexer.get_tokens(code):  # type: ignore[attr-defined]
        if ttype in token_mod.Comment and not any(ttype in k for k in keep):
            removed += 1
            value = "\n" * value.count("\n")
        elif ttype in token_mod.String and "\n" in value:
            # a newline that is the token's last character ends the line the string closed on
            inner = value.count("\n") - (1 if value.endswith("\n") else 0)
            in_string.update(range(line, line + inner))
        out.append(value)
        line += value.count("\n")
    return "".join(out), removed, in_string
