"""The architecture docs/architecture.md draws holds in the code, and stays so.

- ``lint-imports`` (import-linter) keeps the import contracts of ``[tool.importlinter]``
  in ``pyproject.toml``: the layers, only the catalog importing SQLAlchemy and Alembic,
  the client importing nothing of the server, the blob store knowing no catalog or OCI.
- ``open_registry`` is the one way to open a registry: outside the catalog package, no
  code but it builds a catalog or a catalog engine (an AST walk over ``src/``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "cloudimg"
OPENERS = {"Catalog", "create_engine", "create_async_engine"}
"""What builds a catalog or its engine; only the catalog package itself and
``cloudimg.registry.open_registry`` may call them."""


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--config", str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "0 broken" in result.stdout


def _calls(tree: ast.AST, names: set[str]) -> Iterator[tuple[ast.Call, str]]:
    """Each call of a function or class named in ``names`` (bare or as an attribute)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name in names:
            yield node, name


def _enclosing_functions(tree: ast.AST) -> dict[ast.AST, str]:
    """Every node of ``tree`` and the name of the outermost function it is in."""
    owner: dict[ast.AST, str] = {}
    for top in ast.walk(tree):
        if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef) and top not in owner:
            for node in ast.walk(top):
                owner.setdefault(node, top.name)
    return owner


def test_only_open_registry_builds_a_catalog_or_its_engine() -> None:
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "catalog":
            continue  # the catalog builds its own parts (an engine to read the schema version)
        tree = ast.parse(path.read_text(), str(path))
        owner = _enclosing_functions(tree)
        for call, name in _calls(tree, OPENERS):
            where = f"{relative}:{call.lineno} {owner.get(call, '<module>')}"
            found.append(f"{where} calls {name}")
    opened = [line for line in found if line.startswith("registry.py:")]
    assert opened, "open_registry builds the catalog: the check must see it"
    assert all(line.split()[1] == "open_registry" for line in opened), opened
    assert not [line for line in found if not line.startswith("registry.py:")], found
