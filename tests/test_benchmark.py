"""``benchmarks/bench.py --quick`` runs end to end and prints every target of issue 12.

The smoke run is the command ``docs/performance.md`` gives. Nothing here looks at a
timing: only that each target's line is printed with a verdict, and that the exit
status follows the verdicts (1 when any target fails, else 0).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each target of issue 12 (and each figure it asks to report), as its table line starts.
TARGETS = {
    r"1 upload POST pinned, vs bare ASGI app": "verdict",
    r"1 upload PUT pinned, vs bare ASGI app": "verdict",
    r"1 upload POST unpinned, vs nginx PUT \+ fsync": "verdict",
    r"1 upload PUT unpinned, vs nginx PUT \+ fsync": "verdict",
    r"1 upload stage CPU s/GiB": "info",
    r"2 upload POST unpinned, vs distribution 2\.8": "verdict",
    r"2 upload PUT unpinned, vs distribution 2\.8": "verdict",
    r"2 download \S+ MiB whole, vs distribution 2\.8": "verdict",
    r"2 download \S+ MiB whole, vs nginx sendfile": "verdict",
    r"2 download range bytes=\d+-\d+, vs nginx sendfile": "verdict",
    r"2 peak RSS during a \S+ MiB POST upload": "verdict",
    r"2 peak RSS during a \S+ MiB PUT upload": "verdict",
    r"2 cost of \d+ concurrent slow downloads": "info",
    r"3 listing\+meta p99, 8 whole-file downloads": "verdict",
    r"3 listing\+meta p99, \d+ slow downloads": "verdict",
    r"3 probes\+listings p99, [\d,]+ idle connections \+ \d+ paused downloads": "verdict",
    r"4 upload, [\d,]+ x 20 tags vs 10 x 20": "verdict",
    r"4 delete, ": "verdict",
    r"4 meta, ": "verdict",
    r"4 metadata query, ": "info",
    r"4 repository listing, ": "verdict",
    r"4 image listing, ": "verdict",
    r"4 GET /reg, ": "info",
}


def _table(stdout: str) -> dict[str, str]:
    """Figure -> result column of the printed table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) == 7 and cells[0][:1].isdigit():
            rows[cells[0]] = cells[5]
    return rows


@pytest.mark.slow
def test_quick_mode_prints_every_target_with_a_verdict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--quick", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    table = _table(result.stdout)
    for pattern, kind in TARGETS.items():
        found = [figure for figure in table if re.match(pattern, figure)]
        # One line a target; the stage CPU figure has one per upload kind when the
        # server counts stages, and one saying it does not otherwise.
        assert len(found) == 1 or (kind == "info" and found), (pattern, list(table))
        allowed = {"info"} if kind == "info" else {"PASS", "FAIL", "skip"}
        assert {table[figure] for figure in found} <= allowed, (found, table)
    unknown = [f for f in table if not any(re.match(p, f) for p in TARGETS)]
    assert not unknown
    failed = any(verdict == "FAIL" for verdict in table.values())
    assert result.returncode == (1 if failed else 0)
    assert list(tmp_path.iterdir()) == []  # the temp dir is gone, servers and all
