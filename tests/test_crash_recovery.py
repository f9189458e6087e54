"""A crash at any moment of a delete or an overwrite leaves every listed tag downloadable.

Each fault point (tests/crash_support.py) kills a real server with SIGKILL at one step
of the protocol, on each catalog backend. A plain server started afterwards must serve
every listed tag's bytes at once: a blob file that the crash left in ``trash/`` while
its tag stayed is put back at start-up, before any download asks for it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.conftest import start_server
from tests.crash_support import (
    DELETE_POINTS,
    OVERWRITE_POINTS,
    FaultPoint,
    crash_at,
    download_every_tag,
    expected_tags,
    seed,
    victim_digest,
)
from tests.invariants import assert_invariants, blob_path
from tests.maintenance_support import cli

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/strace").exists(), reason="needs strace for the fault injection"
)


@pytest.mark.parametrize("point", DELETE_POINTS + OVERWRITE_POINTS, ids=str)
def test_crash_at_each_step_leaves_every_tag_downloadable(
    point: FaultPoint, catalog_root: Path
) -> None:
    images = seed(catalog_root, secrets.token_hex(4))
    crash = crash_at(point, catalog_root, images)
    old = victim_digest(crash)
    if point.name == "after-trash-rename":
        assert crash.trash[0].startswith(old), "the crash came before the trash rename"
    if point.committed and point.name == "before-purge":
        assert crash.trash, "the purge ran before the crash"
        assert crash.trash[0].startswith(old)

    server = start_server(catalog_root)
    try:
        # Put back at start-up, before anyone asked for it: the tag is listed, so its
        # file is where downloads look.
        assert blob_path(server, old).exists() == (not point.committed)
        assert download_every_tag(server) == expected_tags(crash)
    finally:
        server.stop()
    cli("gc", "--grace", "0", "--data-root", str(catalog_root), check=0)
    assert_invariants(server)
