"""The metadata index follows the tag whichever way it was written: a tag written by a
multipart POST, a raw PUT, ``cloudimg push``, a retag, a ``/v2`` push and
``import-legacy`` is found by ``/reg/_query`` with exactly the metadata ``/meta``
shows, and moving it (to other bytes with other metadata) or deleting it updates
the answers at once; on both catalog backends."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, upload, upload_raw
from tests.maintenance_support import cli
from tests.oci_support import EMPTY, artifact_manifest, push_blob, put_manifest
from tests.support import blake3_hex, random_image

IMAGE = "disk"
Writer = Callable[[RunningServer, httpx.Client, str, str, Path], dict[str, str]]


def _post(
    server: RunningServer, http: httpx.Client, repo: str, tag: str, _: Path
) -> dict[str, str]:
    meta = {"way": "post", "os": "ubuntu"}
    assert upload(http, f"/reg/{repo}/{IMAGE}/{tag}", random_image(4096), meta).status_code == 201
    return meta


def _put(server: RunningServer, http: httpx.Client, repo: str, tag: str, _: Path) -> dict[str, str]:
    meta = {"way": "put", "note": "two words = one value"}
    written = upload_raw(http, f"/reg/{repo}/{IMAGE}/{tag}", random_image(4096), meta)
    assert written.status_code == 201, written.text
    return meta


def _push(
    server: RunningServer, http: httpx.Client, repo: str, tag: str, tmp: Path
) -> dict[str, str]:
    (tmp / "disk.raw").write_bytes(random_image(4096))
    env = {**os.environ, "CLOUDIMG_SERVER": server.base_url}
    done = subprocess.run(
        [sys.executable, "-m", "cloudimg", "push", str(tmp / "disk.raw"), f"{repo}/{IMAGE}:{tag}",
         "--meta", "way=push", "--meta", "gpu=nvidia"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {"way": "push", "gpu": "nvidia"}


def _retag(
    server: RunningServer, http: httpx.Client, repo: str, tag: str, _: Path
) -> dict[str, str]:
    data = random_image(4096)
    assert (
        upload(http, f"/reg/{repo}/{IMAGE}/{tag}-source", data, {"way": "source"}).status_code
        == 201
    )
    meta = {"way": "retag"}
    body = {"digest": f"blake3:{blake3_hex(data)}", "meta": meta}
    assert http.post(f"/reg/{repo}/{IMAGE}/{tag}/retag", json=body).status_code == 201
    return meta


def _v2(server: RunningServer, http: httpx.Client, repo: str, tag: str, _: Path) -> dict[str, str]:
    """A ``/v2`` push over a tag a POST wrote with metadata: the push names none, so
    whatever the tag then holds, ``/meta`` and the index agree (checked by the caller),
    and a pair it no longer holds finds it no more."""
    before = {"way": "v2-before", "os": "fedora"}
    assert upload(http, f"/reg/{repo}/{IMAGE}/{tag}", random_image(4096), before).status_code == 201
    data = random_image(4096)
    push_blob(http, f"{repo}/{IMAGE}", EMPTY)
    push_blob(http, f"{repo}/{IMAGE}", data)
    assert put_manifest(http, f"{repo}/{IMAGE}", tag, artifact_manifest(data)).status_code == 201
    assert http.get(f"/reg/{repo}/{IMAGE}/{tag}").content == data
    record: dict[str, str] = http.get(f"/reg/{repo}/{IMAGE}/{tag}/meta").json()["data"]
    for key, value in before.items():
        found = f"{repo}/{IMAGE}/{tag}" in _found(http, repo, meta=f"{key}={value}")
        assert found == (record.get(key) == value), (key, record)
    return record


def _import(
    server: RunningServer, http: httpx.Client, repo: str, tag: str, tmp: Path
) -> dict[str, str]:
    entry = tmp / "old" / repo / IMAGE / tag
    entry.mkdir(parents=True)
    (entry / "image.bin").write_bytes(random_image(4096))
    (entry / "meta.json").write_text('{"way": "import-legacy", "os": "debian"}')
    cli("import-legacy", "--data-root", str(server.data_root), "--from", str(tmp / "old"), check=0)
    return {"way": "import-legacy", "os": "debian"}


WRITERS: dict[str, Writer] = {
    "post": _post,
    "put": _put,
    "push": _push,
    "retag": _retag,
    "v2-push": _v2,
    "import-legacy": _import,
}


def _found(http: httpx.Client, repo: str, **params: str) -> dict[str, dict[str, Any]]:
    """``repo/image/tag`` -> metadata of every tag of ``repo`` the query finds."""
    response = http.get("/reg/_query", params={**params, "repo_prefix": repo})
    assert response.status_code == 200, response.text
    return {f"{r['repo']}/{r['image']}/{r['tag']}": r["meta"] for r in response.json()["data"]}


def _assert_indexed(http: httpx.Client, repo: str, tag: str, meta: dict[str, str]) -> None:
    """``/meta`` shows ``meta``, and each of its pairs (and keys) finds the tag with it."""
    name = f"{repo}/{IMAGE}/{tag}"
    assert http.get(f"/reg/{name}/meta").json()["data"] == meta
    for key, value in meta.items():
        assert _found(http, repo, meta=f"{key}={value}").get(name) == meta, (key, value)
        assert _found(http, repo, has=key).get(name) == meta, key
    if meta:
        both = [f"{key}={value}" for key, value in meta.items()]
        assert name in _found(http, repo, meta=both)  # type: ignore[arg-type]


@pytest.mark.parametrize("way", list(WRITERS))
def test_a_tag_written_any_way_is_found_moved_and_forgotten(
    server: RunningServer, client: httpx.Client, repo: str, tmp_path: Path, way: str
) -> None:
    tag = "v1"
    name = f"{repo}/{IMAGE}/{tag}"
    meta = WRITERS[way](server, client, repo, tag, tmp_path)
    _assert_indexed(client, repo, tag, meta)
    # Moved to other bytes with other metadata: the old pairs no longer find it.
    moved = {"way": "moved", "from": way}
    assert upload(client, f"/reg/{name}", random_image(4096), moved).status_code == 201
    _assert_indexed(client, repo, tag, moved)
    for key, value in meta.items():
        if moved.get(key) != value:
            assert name not in _found(client, repo, meta=f"{key}={value}")
    assert client.delete(f"/reg/{name}").status_code == 200
    for key, value in moved.items():
        assert name not in _found(client, repo, meta=f"{key}={value}")
        assert name not in _found(client, repo, has=key)
