"""The layout's rules (docs/architecture.md), checked on the source: no import cycle between mtr's modules,
no stage importing another stage, the data flowing one way."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mtr"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Every mtr module -> the mtr modules it imports (at the top or inside a function)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtr"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("mtr")]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    # a package's __init__ re-exporting its modules is not a dependency of those modules on the package
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def test_no_import_cycles():
    graph = import_graph()
    # the backends package's __init__ imports its modules, which import each other through the package path
    for name in graph:
        graph[name] = {m for m in graph[name] if not (m == "mtr.backends" and name.startswith("mtr.backends."))}
    assert cycles(graph) == []


def test_no_stage_imports_another_stage_and_nothing_below_imports_a_stage():
    graph = import_graph()
    stages = {m for m in graph if m.startswith("mtr.stages.")}
    for stage in stages:
        assert not graph[stage] & stages, f"{stage} imports {graph[stage] & stages}"
    # only the pipeline and the command line run stages; the report reads their files
    users = {m for m, deps in graph.items() if deps & stages} - stages
    assert users <= {"mtr.pipeline", "mtr.cli"}, users


def test_the_method_boxes_are_modules():
    for name in ("toolmaker", "toolactor", "agents", "env", "rubric", "rollout", "checkpoints", "rundir",
                 "backends/hf", "backends/llamacpp", "backends/openai", "backends/pool", "stages/tools",
                 "stages/synth", "stages/filter", "stages/sft", "stages/grpo", "stages/evaluate"):
        assert (SRC / f"{name}.py").is_file(), name
