"""The OCI slice stays one slice: the catalog and the blob store know nothing of it, and
only its store (``cloudimg.oci.store``) speaks SQL (docs/architecture.md).

Read from the source's import statements (every one, also those inside functions), so
an import added anywhere in a module counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cloudimg

_SRC = Path(cloudimg.__file__).parent


def _modules(package: str) -> list[Path]:
    return sorted((_SRC / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, as written (``from x import y``: ``x`` and ``x.y``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        bad = sorted(
            name
            for name in _imports(path)
            if any(name == prefix or name.startswith(f"{prefix}.") for prefix in forbidden)
        )
        if bad:
            found[str(path.relative_to(_SRC))] = bad
    return found


@pytest.mark.parametrize("package", ["catalog", "blobstore"])
def test_the_catalog_and_the_blob_store_import_nothing_of_the_oci_slice(package: str) -> None:
    assert _offending(_modules(package), ("cloudimg.oci", "cloudimg.api")) == {}


def test_only_the_slices_store_speaks_sql() -> None:
    outside = [path for path in _modules("oci") if "store" not in path.relative_to(_SRC).parts]
    assert outside, "the slice has modules outside its store"
    assert _offending(outside, ("sqlalchemy",)) == {}


def test_the_slices_session_logic_knows_no_http() -> None:
    logic = [_SRC / "oci" / "sessions.py", _SRC / "oci" / "keep.py", _SRC / "oci" / "errors.py"]
    assert _offending(logic, ("litestar", "cloudimg.api")) == {}
