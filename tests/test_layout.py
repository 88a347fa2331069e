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


def _module_imports(stage: str) -> dict[str, set[str]]:
    """{module: the effedge modules it imports anywhere (in functions too)} for the modules of ``stage``; ``from
    package import name`` counts as the submodule where ``name`` is one, else as the package."""
    import ast

    def module_name(path: Path) -> str:
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    known = {module_name(path) for path in PACKAGE.rglob("*.py")}
    graph = {}
    for path in (PACKAGE / stage).glob("*.py"):
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    targets.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module)
        graph[module_name(path)] = {t for t in targets if t in known}
    return graph


def test_runtime_and_engine_have_no_import_cycles():
    """A runner module never imports what imports it (the TensorRT-RTX runner subclasses the TensorRT one; the
    factory choosing between them lives apart)."""
    graph = {**_module_imports("runtime"), **_module_imports("engine")}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target in graph:
                visit(target, path + [target])

    for module in sorted(graph):
        visit(module, [module])
    assert cycles == []


def test_bench_benches_built_targets_and_orchestrates_nothing():
    """Only pipeline/, fleet/ and cli/ run stages in order: bench/ never reaches for them (the matrix's compiling
    is effedge.pipeline.bench_matrix)."""
    for path in (PACKAGE / "bench").glob("*.py"):
        assert not re.search(r"^\s*(from|import) effedge\.(pipeline|fleet|cli)\b", path.read_text(), re.MULTILINE), \
            path.name


@pytest.mark.parametrize("package_dir", ["bench", "pipeline"])
def test_no_module_imports_names_from_a_package_init_that_imports_it_back(package_dir):
    init = PACKAGE / package_dir / "__init__.py"
    package = f"effedge.{package_dir}"
    offenders = []
    for path in init.parent.glob("*.py"):
        imported_by_init = re.search(rf"^\s*(from|import) {package}\.{path.stem}\b", init.read_text(), re.MULTILINE)
        if imported_by_init and re.search(rf"^\s*from {package} import ", path.read_text(), re.MULTILINE):
            offenders.append(path.name)
    assert offenders == []
