"""Who imports whom (docs/ARCHITECTURE.md, "the rooms"), read from the source with `ast`, so a
layering break fails here rather than in a review: kdcore is pure PyTorch, jobs holds no web, queue
or torch code, api and worker never import each other, the client stands alone, and no two modules
of the project import each other, directly or around a loop (imports inside functions count)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "worker", "jobs", "kdcore", "kdclient")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names a module imports: `from a import b` is the module a.b where that is one,
    else a. A package's own __init__ run on the way to a submodule is not counted."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            subs = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            out |= subs or {base}
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def _third_party(package: str) -> set[str]:
    names = {_top(i) for m, imports in IMPORTS.items() if _top(m) == package for i in imports}
    return names - set(sys.stdlib_module_names) - set(PACKAGES) - {"__future__"}


def _project(package: str) -> set[str]:
    return {_top(i) for m, imports in IMPORTS.items() if _top(m) == package for i in imports
            if _top(i) in PACKAGES} - {package}


def test_kdcore_is_pure_pytorch():
    assert _project("kdcore") == set()
    assert _third_party("kdcore") <= {"torch", "numpy", "safetensors", "onnx", "onnxruntime", "pyarrow", "sklearn",
                                      "mnist1d"}


def test_jobs_holds_no_web_queue_or_torch_code():
    assert _project("jobs") == set()
    # psycopg: the database driver, used directly by the API's AsyncReader (jobs/reads.py)
    assert _third_party("jobs") <= {"sqlalchemy", "psycopg", "alembic", "pydantic", "pydantic_settings", "boto3",
                                    "botocore"}


def test_api_and_worker_never_import_each_other_and_the_client_stands_alone():
    assert _project("api") <= {"jobs", "kdcore"}
    assert _project("worker") <= {"jobs", "kdcore"}
    assert _project("kdclient") == set()
    assert "torch" not in _third_party("api")  # the API checks uploads through kdcore's bounded children


def test_no_import_cycle():
    graph = {m: {i for i in imports if i in MODULES and i != m} for m, imports in IMPORTS.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            assert (cycle := visit(module)) is None, " -> ".join(cycle)
