"""The packages' layering, read from the source: the library never reaches into workloads or into another
package's private names, and no module grows past a size one reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ["fabric", "llm", "rag"]
MAX_LINES = 500


def _modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) of every import statement in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


def test_the_library_never_imports_a_workload():
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in _modules(*LIBRARY)
                 for module, _, line in _imports(path) if module == "workloads" or module.startswith("workloads.")]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package", ["llm", "rag", "workloads"])
def test_no_package_uses_private_names_of_fabric(package):
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}.{name}" for path in _modules(package)
                 for module, name, line in _imports(path)
                 if _private(module, name)]
    assert not offenders, "\n".join(offenders)


def _private(module: str, name: str | None) -> bool:
    """A fabric module or name that starts with an underscore (``fabric.registry._client``)."""
    if module != "fabric" and not module.startswith("fabric."):
        return False
    return any(part.startswith("_") for part in [*module.split("."), name or ""] if part != "__init__")


def test_no_library_module_is_longer_than_a_reader_can_hold():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules(*LIBRARY)}
    long = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not long, f"split these along their seams (at most {MAX_LINES} lines): {long}"


def test_tabular_model_types_are_one_protocol_with_an_implementation_each():
    import typing

    from fabric.tabular.config import ModelConfig
    from fabric.tabular.models import KINDS, ModelKind

    assert set(typing.get_args(ModelConfig.model_fields["type"].annotation)) == set(KINDS)
    assert all(isinstance(kind, ModelKind) for kind in KINDS.values())
    names = set(KINDS)
    branches = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in _modules("fabric", "workloads")
                if path.name != "models.py" for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in names
                                                         for c in [node.left, *node.comparators])]
    assert not branches, f"branches on a model type's name outside fabric/tabular/models.py: {branches}"
