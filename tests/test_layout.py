"""The package's rooms and rules: the runtime imports no stage, nobody imports another module's private names,
the top level stays small."""
import re
import subprocess
import sys
from pathlib import Path

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


def _imports_of(path: Path) -> set[str]:
    """Every effedge module ``path`` imports, at the top or inside a function (a lazy import is still a
    dependency), as dotted names."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("effedge.")}


def test_fleet_modules_import_no_module_that_imports_them_back():
    """fleet/: the executors and the results import the tracker, and sweep imports them, never the other way
    round (a name imported from the package counts as importing the module that defines it)."""
    modules = {f"effedge.fleet.{p.stem}": p for p in (PACKAGE / "fleet").glob("*.py") if p.stem != "__init__"}
    from_package = {}  # effedge.fleet.NAME -> the module __init__ takes NAME from
    for module, names in re.findall(r"^from effedge\.fleet\.(\w+) import (.+)$",
                                    (PACKAGE / "fleet" / "__init__.py").read_text(), re.M):
        from_package.update({f"effedge.fleet.{name.strip()}": f"effedge.fleet.{module}" for name in names.split(",")})
    graph = {name: {from_package.get(t, t) for t in _imports_of(path)} & set(modules) - {name}
             for name, path in modules.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return False

    assert sorted((a, b) for a in graph for b in graph[a] if reaches(b, a)) == []
