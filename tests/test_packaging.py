"""A non-editable install must carry the migrations (serve applies them at start-up)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_NOT_SOURCES = shutil.ignore_patterns("__pycache__", "*.egg-info")


def test_wheel_contains_package_and_migrations(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ into the tree it builds.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "src", "migrations"):
        if (ROOT / name).is_dir():
            # Not the bytecode caches (nor the editable install's metadata, rebuilt by
            # the build anyway): other test processes, pytest-xdist's workers and the
            # servers they start, write them meanwhile, and a file listed here may be
            # gone (renamed into place) by the time it is copied.
            shutil.copytree(ROOT / name, source / name, ignore=_NOT_SOURCES)
        else:
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("cloudimg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected_migrations = {
        f"cloudimg/migrations/versions/{p.name}"
        for p in (ROOT / "migrations" / "versions").glob("*.py")
    }
    assert expected_migrations <= names
    # Every module of the source tree, so a package missing from pyproject's list fails
    # here and not in a user's `pip install .`.
    source_modules = {
        f"cloudimg/{p.relative_to(ROOT / 'src' / 'cloudimg').as_posix()}"
        for p in (ROOT / "src" / "cloudimg").rglob("*.py")
    }
    assert source_modules - names == set()
    assert {
        "cloudimg/migrations/env.py",
        "cloudimg/migrations/script.py.mako",
        "cloudimg/cli/main.py",
        "cloudimg/client/session.py",
        "cloudimg/py.typed",
        "cloudimg/api/web/templates/base.html",
        "cloudimg/api/web/templates/tag.html",
        "cloudimg/api/web/static/style.css",
        "cloudimg/api/web/static/app.js",
    } <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cloudimg = cloudimg.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
