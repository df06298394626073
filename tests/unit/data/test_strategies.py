"""aggressive, chinese and code cleaning, checked on real text from registry packages."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from aptops.core.errors import ConfigError
from aptops.data import clean_text, clean_text_with_stats

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FORTUNES = Path("/usr/share/games/fortunes")


def test_aggressive_lowercases_keeps_words_drops_stopwords():
    out, stats = clean_text_with_stats("Hello, World! This is THE best-ever test of 2026 — café.", "aggressive")
    assert out == "hello world best test 2026 café"
    assert stats.stopwords == 5  # this, is, the, ever, of


def test_chinese_converts_traditional_segments_and_drops_particles():
    out, stats = clean_text_with_stats("我們今天去公園玩了吧！這個測試很重要。", "chinese")
    words = out.split(" ")
    assert "公园" in words and "测试" in words and "重要" in words  # simplified
    assert not {"了", "吧", "的"} & set(words)  # particles by POS
    assert "！" not in out and "。" not in out
    assert stats.traditional_converted >= 4  # 們 園 這 個 測 試 ...
    assert stats.punctuation == 2


def test_chinese_on_real_poems_roundtrips_through_traditional():
    opencc = pytest.importorskip("opencc")
    poems = (FORTUNES / "tang300").read_text(encoding="utf-8").split("\n%\n")[:20]
    to_trad = opencc.OpenCC("s2t")
    for poem in poems:
        simplified = clean_text(poem, "chinese")
        assert simplified, poem
        assert clean_text(to_trad.convert(poem), "chinese") == simplified
        assert "\x1b" not in simplified and "[3" not in simplified


@pytest.mark.parametrize("name", ["textwrap.py", "shlex.py", "tokenize.py", "json/decoder.py"])
def test_code_cleaning_keeps_python_semantics(name):
    source = (STDLIB / name).read_text(encoding="utf-8")
    cleaned, stats = clean_text_with_stats(source, "code", language="python")
    assert stats.comments > 0
    code_lines = [line for line in cleaned.splitlines() if not line.startswith(" " * 8) or line.strip()]
    assert len(code_lines) < len(source.splitlines())
    assert ast.dump(ast.parse(cleaned)) == ast.dump(ast.parse(source))


def test_code_comment_markers_inside_strings_survive():
    src = 'url = "http://x.io/#frag"  # real comment\npat = r"\\s+#\\s*"\ns = """\n# in a docstring\n"""\n'
    out = clean_text(src, "code", language="python")
    assert out == 'url = "http://x.io/#frag"\npat = r"\\s+#\\s*"\ns = """\n# in a docstring\n"""'


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is the oracle for C comment removal")
def test_code_cleaning_of_c_matches_the_c_preprocessor(tmp_path):
    include = Path(sysconfig.get_paths()["include"])
    for header in ("listobject.h", "object.h", "unicodeobject.h"):
        source = (include / header).read_text(encoding="utf-8")
        cleaned = clean_text(source, "code", language="c")
        # gcc -fpreprocessed removes comments without expanding anything: the reference answer.
        path = tmp_path / header
        path.write_text(source)
        ref = subprocess.run(["gcc", "-fpreprocessed", "-dD", "-E", "-P", "-x", "c", str(path)],
                             capture_output=True, text=True, check=True).stdout
        def norm(text):
            # gcc joins continued lines, writes "# define" as "#define" and "(a, b)" macro parameters
            # as "(a,b)"; none of that is about comments
            text = re.sub(r"#\s+", "#", " ".join(text.replace("\\\n", " ").split()))
            return re.sub(r"\s*,\s*", ",", text)

        assert norm(cleaned) == norm(ref), header


def test_shell_keeps_shebang_and_quoted_hashes():
    src = '#!/bin/sh\n# setup\necho "a # b" # note\nx=a#b\n\n\tcd /tmp\n'
    assert clean_text(src, "code", language="bash") == '#!/bin/sh\necho "a # b"\nx=a#b\n    cd /tmp'


def test_unknown_code_language():
    with pytest.raises(ConfigError, match="language='klingon' is not a language pygments knows"):
        clean_text("x", "code", language="klingon")
