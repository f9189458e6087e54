"""The contract of docs/api.md, end to end on a real socket."""

from __future__ import annotations

import httpx

from tests.conftest import upload
from tests.support import random_image


def test_upload_list_download_delete(client: httpx.Client, repo: str) -> None:
    data = random_image(300_000)
    response = upload(client, f"/reg/{repo}/ubuntu/22.04", data, {"os": "ubuntu"})
    assert response.status_code == 201
    assert response.json() == {"success": True, "data": None}

    assert repo in client.get("/reg").json()["data"]
    assert client.get(f"/reg/{repo}").json() == {"success": True, "data": ["ubuntu"]}
    assert client.get(f"/reg/{repo}/ubuntu").json() == {"success": True, "data": ["22.04"]}
    downloaded = client.get(f"/reg/{repo}/ubuntu/22.04")
    assert downloaded.status_code == 200
    assert downloaded.content == data
    assert downloaded.headers["content-type"] == "application/octet-stream"

    deleted = client.delete(f"/reg/{repo}/ubuntu/22.04")
    assert deleted.status_code == 200
    assert deleted.json() == {"success": True, "data": None}
    assert repo not in (client.get("/reg").json()["data"] or [])
    assert client.get(f"/reg/{repo}/ubuntu/22.04").status_code == 404
