"""A crash at any moment of a delete or an overwrite leaves every listed tag downloadable.

Each fault point (tests/crash_support.py) kills a real server with SIGKILL at one step
of the protocol, on each catalog backend. A plain server started afterwards must serve
every listed tag's bytes at once: a blob file that the crash left in ``trash/`` while
its tag stayed is put back at start-up, before any download asks for it.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import httpx
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
    send_in_background,
    trace,
    victim_digest,
    wait_for_log,
)
from tests.invariants import assert_invariants, blob_path
from tests.maintenance_support import cli, digest_of

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


def point(protocol: str, name: str) -> FaultPoint:
    return next(p for p in DELETE_POINTS + OVERWRITE_POINTS if str(p) == f"{protocol}:{name}")


@pytest.mark.parametrize("protocol", ["delete", "overwrite"])
def test_a_running_server_puts_the_file_back_when_a_download_needs_it(
    protocol: str, catalog_root: Path
) -> None:
    """Another server on the same data root crashes mid-delete: this one serves the bytes.

    This server was up before the crash, so only the download itself can notice.
    """
    images = seed(catalog_root, secrets.token_hex(4))
    fault = point(protocol, "after-trash-rename")
    survivor = start_server(catalog_root)
    try:
        crash = crash_at(fault, catalog_root, images)
        old = victim_digest(crash)
        assert not blob_path(survivor, old).exists()
        with survivor.client() as http:
            head = http.head(images.victim)
            assert head.status_code == 200, head.text
            assert int(head.headers["content-length"]) == len(images.tags[images.victim])
        assert blob_path(survivor, old).exists()
        assert not any((catalog_root / "trash").iterdir())
        assert download_every_tag(survivor) == expected_tags(crash)
    finally:
        survivor.stop()
    cli("gc", "--grace", "0", "--data-root", str(catalog_root), check=0)  # the upload's staging
    assert_invariants(survivor)


@pytest.mark.parametrize("protocol", ["delete", "overwrite"])
def test_a_download_during_a_delete_does_not_bring_the_file_back(
    protocol: str, catalog_root: Path
) -> None:
    """A download that finds the file trashed by a delete still in flight does not restore it.

    The delete is held right after its trash rename (under the catalog lock); a second
    server then downloads the tag, finds the file missing and tries to put it back. It
    must wait for the lock and, the delete having committed, leave the file in trash.
    """
    images = seed(catalog_root, secrets.token_hex(4))
    fault = point(protocol, "after-trash-rename")
    reader = start_server(catalog_root)
    # Logs the reader's look into trash/, which comes right before it takes the lock.
    watcher = trace(reader, None, "openat", catalog_root / "trash")
    traced = trace(start_server(catalog_root), fault.inject)
    downloads: list[httpx.Response] = []
    try:
        sender, answers = send_in_background(traced.server, fault, images)
        wait_for_log(traced.log, fault.held_after or "", traced.server.process)
        getter = threading.Thread(
            target=lambda: downloads.append(reader.client().get(images.victim))
        )
        getter.start()
        wait_for_log(watcher.log, r"openat\(.*/trash", reader.process)
        traced.release()  # the delete goes on and commits; the download then gets the lock
        sender.join(timeout=60)
        getter.join(timeout=60)
    finally:
        traced.kill()
        watcher.release()
        reader.stop()
    response = answers[0]
    assert isinstance(response, httpx.Response)
    assert response.status_code in (200, 201), response.text
    old = digest_of(images.tags[images.victim])
    assert not blob_path(reader, old).exists()
    assert not any((catalog_root / "trash").iterdir())
    if protocol == "delete":
        assert downloads[0].status_code == 404, downloads[0].text
    else:  # the download looks again and finds the new bytes
        assert downloads[0].status_code == 200, downloads[0].text
        assert downloads[0].content == images.replacement
    assert_invariants(reader)
