"""The layers of DESIGN.md hold: stage packages never import each other in a cycle, and the shared
toolkits below them (``aptops.core``, ``aptops.lm``) never import a stage that imports them back."""

from __future__ import annotations

import ast
from pathlib import Path

import aptops
from aptops.stages import STAGES

SRC = Path(aptops.__file__).parent
PACKAGES = sorted({s.name for s in STAGES} | {"lm", "core"})


def _imports(package: str) -> set[str]:
    """The aptops packages that any module of ``package`` imports (at the top or inside a function)."""
    found: set[str] = set()
    for path in (SRC / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "aptops" and len(parts) > 1 and parts[1] in PACKAGES and parts[1] != package:
                    found.add(parts[1])
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt] if nxt in path else [*path, nxt]
            if not state.get(nxt) and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if not state.get(start) and (found := visit(start, [start])):
            return found
    return None


def test_the_package_import_graph_has_no_cycle():
    graph = {p: _imports(p) for p in PACKAGES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert graph["core"] == set(), graph["core"]
    assert graph["lm"] <= {"core"}, graph["lm"]  # Hub ids and datasets are read through core.hub_client
    for stage in ("export", "backup"):  # model loading and the Hub client are below the stages, not in hub
        assert "hub" not in graph[stage], (stage, graph[stage])


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_one_next_token_cross_entropy_in_the_library():
    """Held-out loss and perplexity are computed in aptops.lm.scoring only; stages call it."""
    calls = []
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "math.exp(min(" in text or ("cross_entropy(" in text and "logits[:, :-1]" in text):
            calls.append(str(path.relative_to(SRC)))
    assert calls == ["lm/scoring.py"], calls
