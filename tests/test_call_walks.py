"""``benchmarks/call_walks.py --json`` runs end to end and sees each walk's modules.

It runs in a child process: the script profiles every thread and replaces the event
loop policy of the process it runs in. No timing is looked at, and no count is pinned
(the refactor that the figures are for changes them): only that each walk entered
cloudimg modules, the catalog's among them, and crossed between them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_each_walk_enters_the_catalog_and_crosses_modules() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "call_walks.py"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert set(figures) == {"upload", "push", "gc"}
    for name, walk in figures.items():
        assert walk["modules"] == len(walk["module_names"]) > 1, name
        assert all(module.startswith("cloudimg.") for module in walk["module_names"])
        assert walk["crossing_pairs"] == len(walk["crossings"]) > 0, name
        assert walk["crossing_calls"] >= walk["crossing_pairs"], name
        assert walk["back_and_forth_pairs"] == len(walk["back_and_forth"]), name
        # Every walk reads or writes the catalog (the one layer every refactor keeps).
        assert any(m.startswith("cloudimg.catalog") for m in walk["module_names"]), name
