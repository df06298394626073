"""The layers of DESIGN.md hold: the stages are siblings over one toolkit. A stage package imports only the shared
layers below it (``aptops.lm``, ``aptops.core`` and the stage table ``aptops.stages``), never another stage, the
legacy plugins or the CLI; the toolkit imports no stage; nothing draws a cycle. The graph is printed (``-s``)."""

from __future__ import annotations

import ast
from pathlib import Path

import aptops
from aptops.stages import STAGES

SRC = Path(aptops.__file__).parent
STAGE_PACKAGES = sorted(s.name for s in STAGES)
SHARED = {"lm", "core", "stages"}  # stages: the stage table module, aptops/stages.py
PACKAGES = sorted({*STAGE_PACKAGES, "lm", "core", "cluster", "plugins", "cli", "stages"})


def _imports(package: str) -> set[str]:
    """The aptops packages that any module of ``package`` imports (at the top or inside a function)."""
    found: set[str] = set()
    files = [SRC / f"{package}.py"] if (SRC / f"{package}.py").is_file() else (SRC / package).rglob("*.py")
    for path in files:
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


def test_the_stages_are_siblings_over_one_toolkit():
    graph = {p: _imports(p) for p in PACKAGES}
    print("\n".join(f"{p} -> {', '.join(sorted(graph[p])) or '-'}" for p in PACKAGES))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert graph["core"] == set(), graph["core"]
    assert graph["stages"] == set(), graph["stages"]  # the table needs only the standard library (make images)
    assert graph["lm"] <= {"core"}, graph["lm"]  # Hub ids and datasets are read through core.hub_client
    for stage in STAGE_PACKAGES:
        assert graph[stage] <= SHARED, f"stage {stage} imports {sorted(graph[stage] - SHARED)}: only lm, core, stages"
    assert graph["plugins"] <= SHARED, graph["plugins"]  # the legacy adapters import stages lazily, by module name
    assert graph["cluster"] <= SHARED, graph["cluster"]  # Kubernetes: under the CLI, pipelines and components
    users = [p for p in PACKAGES if {"cli", "plugins", "cluster"} & graph[p]]
    assert users in ([], ["cli"]), users  # nothing below the CLI imports it, the legacy plugins or the cluster layer


def test_the_import_finder_sees_imports_inside_functions(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.py").write_text("def f():\n    from aptops.b.x import y\n    import aptops.c\n")
    monkeypatch.setattr(f"{__name__}.SRC", tmp_path)
    monkeypatch.setattr(f"{__name__}.PACKAGES", ["a", "b", "c"])
    assert _imports("a") == {"b", "c"}


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
