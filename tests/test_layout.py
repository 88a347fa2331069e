"""The package's rooms and rules: the runtime imports no stage, nobody imports another module's private names,
the top level stays small."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "effedge"


def test_runtime_imports_no_torch_onnx_or_modelopt():
    code = ("import sys, effedge.runtime, effedge.runtime.tensorrt, effedge.runtime.tensorrt_rtx, "
            "effedge.runtime.onnxruntime, effedge.runtime.cuda, effedge.runtime.torch; "
            "print(sorted(m for m in ('torch', 'onnx', 'modelopt', 'onnxsim', 'effedge.models', 'effedge.export', "
            "'effedge.quantize') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_runtime_modules_never_import_models_export_or_quantize():
    for path in (PACKAGE / "runtime").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"effedge\.(models|export|quantize|pipeline|plan|bench)\b", text), path.name


def test_no_private_names_cross_modules():
    offenders = [f"{path.relative_to(PACKAGE)}:{n}" for path in PACKAGE.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"from effedge[.a-z_]* import .*\b_[a-z]", line)]
    assert offenders == []


def test_top_level_holds_at_most_four_modules():
    assert len(list(PACKAGE.glob("*.py"))) <= 4


def _module_imports() -> dict[str, set[str]]:
    """effedge's own import graph, lazy (function-level) imports included: ``from pkg import sub`` is an edge
    to the submodule when ``sub`` is one, else to the package."""
    import ast

    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_modules():
    assert _cycles(_module_imports()) == []


def test_the_cycle_finder_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_stage_imports_pipeline_fleet_or_cli():
    orchestrators = ("effedge.pipeline", "effedge.fleet", "effedge.cli")
    offenders = [f"{name} -> {target}" for name, targets in _module_imports().items()
                 if not name.startswith(orchestrators) and name != "effedge.__main__" for target in targets if target.startswith(orchestrators)]
    assert offenders == []
