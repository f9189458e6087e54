"""Change events with two replicas on one PostgreSQL catalog, the delivering one killed
with kill -9: every committed change is delivered at least once (by the survivor, once
the lease expires), each tag's events in order, and a refused write delivers nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, start_server, upload_raw
from tests.databases import catalog_database, query
from tests.support import assert_error, random_image, wait_until
from tests.test_events_http import events_config, new_secret, start_receiver


def _holder(url: str) -> int | None:
    """The pid in the owner of the delivery lease, None before it is taken."""
    rows = query(url, "SELECT owner FROM event_lease")
    return int(str(rows[0][0]).split("-")[-2]) if rows else None


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_of_the_delivering_replica_loses_no_committed_event(tmp_path: Path) -> None:
    secret = new_secret()
    receiver, httpd = start_receiver(secret)
    config = events_config(tmp_path, receiver, secret)
    root = tmp_path / "data"
    servers: list[RunningServer] = []
    try:
        with catalog_database("postgresql", root):
            args = ("--events-config", str(config))
            servers += [start_server(root, *args), start_server(root, *args)]
            url = servers[0].database_url
            wait_until(lambda: _holder(url) is not None, "a replica took the lease")
            holder = next(s for s in servers if s.process.pid == _holder(url))
            survivor = next(s for s in servers if s is not holder)
            # The endpoint refuses until the holder is dead: the first six events are
            # committed (on both replicas) but undelivered when it dies.
            receiver.refuse["/all"] = -1
            committed: list[str] = []
            with holder.client() as a, survivor.client() as b:
                for n in range(6):
                    http = (a, b)[n % 2]
                    path = f"/reg/vms/fedora/t{n}"
                    assert upload_raw(http, path, random_image(1000 + n)).status_code == 201
                    committed.append(f"vms/fedora:t{n}")
                holder.kill()
                assert receiver.events("/all") == []
                with receiver.lock:
                    receiver.refuse["/all"] = 0
                for n in range(6):  # each tag moved, by the survivor alone
                    path = f"/reg/vms/fedora/t{n}"
                    assert upload_raw(b, path, random_image(2000 + n)).status_code == 201
                refused = upload_raw(
                    b, "/reg/vms/fedora/t0", random_image(3000), headers={"If-None-Match": "*"}
                )
                assert_error(refused, 412, "FAILED_PRECONDITION")

            def delivered() -> list[dict[str, Any]]:
                return receiver.events("/all", "vms/")

            wait_until(
                lambda: (
                    {(e["subject"], e["type"]) for e in delivered()}
                    >= {
                        (s, t)
                        for s in committed
                        for t in ("io.cloudimg.tag.created", "io.cloudimg.tag.moved")
                    }
                ),
                "every committed change delivered",
                timeout=120,
            )
            assert _holder(url) == survivor.process.pid
            events = delivered()
            # At least once: a duplicate is the same event (same id), never a new one.
            by_id = {e["id"]: e for e in events}
            assert len(by_id) == 12
            for subject in committed:
                kinds = [e["type"] for e in events if e["subject"] == subject]
                assert kinds.index("io.cloudimg.tag.created") < kinds.index("io.cloudimg.tag.moved")
                # Only the two committed changes: the refused overwrite of t0 sent nothing.
                assert set(kinds) == {"io.cloudimg.tag.created", "io.cloudimg.tag.moved"}
            sequences = sorted(e["sequence"] for e in by_id.values())
            assert sequences == list(range(sequences[0], sequences[0] + 12))
    finally:
        for server in servers:
            server.stop()
        httpd.shutdown()
