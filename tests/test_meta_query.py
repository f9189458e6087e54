"""``GET /reg/_query``: tags found by metadata and name prefixes, on both catalog backends.

One server per module and backend; each test writes under a repository name of its own
and narrows its queries to it with ``repo_prefix``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, upload, upload_raw
from tests.support import random_image
from tests.test_client import client as cli
from tests.test_client import ok


def _query(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/reg/_query", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is True
    return body


def _names(body: dict[str, Any]) -> list[str]:
    return [f"{row['repo']}/{row['image']}/{row['tag']}" for row in body["data"]]


def _digest(client: httpx.Client, path: str) -> str:
    return str(client.get(f"{path}/meta").json()["digest"])


def test_finds_tags_written_by_post_put_retag_and_a_metadata_update(
    client: httpx.Client, repo: str
) -> None:
    assert upload(client, f"/reg/{repo}/ubuntu/v1", random_image(4096), {"os": "ubuntu"}).is_success
    put = upload_raw(client, f"/reg/{repo}/ubuntu/v2", random_image(4096), {"os": "ubuntu"})
    assert put.is_success
    digest = _digest(client, f"/reg/{repo}/ubuntu/v1")
    retag = client.post(
        f"/reg/{repo}/debian/v1/retag", json={"digest": digest, "meta": {"os": "debian"}}
    )
    assert retag.status_code == 201, retag.text
    assert _names(_query(client, meta="os=ubuntu", repo_prefix=repo)) == [
        f"{repo}/ubuntu/v1",
        f"{repo}/ubuntu/v2",
    ]
    # A metadata update (a retag to the same bytes) moves the tag out of one answer and
    # into another.
    same = client.post(
        f"/reg/{repo}/ubuntu/v2/retag",
        json={"digest": _digest(client, f"/reg/{repo}/ubuntu/v2"), "meta": {"os": "debian"}},
    )
    assert same.status_code == 201, same.text
    assert _names(_query(client, meta="os=ubuntu", repo_prefix=repo)) == [f"{repo}/ubuntu/v1"]
    debian = _query(client, meta="os=debian", repo_prefix=repo)
    assert _names(debian) == [f"{repo}/debian/v1", f"{repo}/ubuntu/v2"]
    row = debian["data"][0]
    # A detailed listing's fields, with the names and the metadata.
    listed = client.get(f"/reg/{repo}/debian", params={"details": "true"}).json()["data"][0]
    assert {key: row[key] for key in listed} == listed
    assert row["digest"] == digest
    assert row["meta"] == {"os": "debian"}
    assert client.delete(f"/reg/{repo}/debian/v1").status_code == 200
    assert _names(_query(client, meta="os=debian", repo_prefix=repo)) == [f"{repo}/ubuntu/v2"]
    assert _query(client, meta="os=ubuntu", repo_prefix=repo + "-none")["data"] == []


def test_conditions_combine_with_and(client: httpx.Client, repo: str) -> None:
    metas = {
        "aa1": {"os": "ubuntu", "gpu": "nvidia"},
        "aa2": {"os": "ubuntu"},
        "bb1": {"os": "fedora", "gpu": "amd", "course": "x=y"},
    }
    for tag, meta in metas.items():
        assert upload(
            client, f"/reg/{repo}/img-{tag[:2]}/{tag}", random_image(512), meta
        ).is_success
    assert _names(_query(client, meta="os=ubuntu", has="gpu", repo_prefix=repo)) == [
        f"{repo}/img-aa/aa1"
    ]
    assert _names(_query(client, has="gpu", repo_prefix=repo)) == [
        f"{repo}/img-aa/aa1",
        f"{repo}/img-bb/bb1",
    ]
    assert _names(_query(client, meta=["os=ubuntu", "gpu=amd"], repo_prefix=repo)) == []
    # A value is split at the first '=' only.
    assert _names(_query(client, meta="course=x=y", repo_prefix=repo)) == [f"{repo}/img-bb/bb1"]
    assert _names(_query(client, repo_prefix=repo, image_prefix="img-b")) == [f"{repo}/img-bb/bb1"]
    assert _names(_query(client, meta="os=Ubuntu", repo_prefix=repo)) == []  # exact
    # Lists as openapi-to-graphql (qlkube) sends them.
    indexed = _query(client, **{"meta[0]": "os=ubuntu", "has[0]": "gpu", "repo_prefix": repo})
    assert _names(indexed) == [f"{repo}/img-aa/aa1"]


def test_values_with_nul_and_backslashes_are_found_exactly(client: httpx.Client, repo: str) -> None:
    """NUL is valid JSON text that PostgreSQL's text columns refuse: the index escapes it
    (and the escape character), so no two values meet and every one is found."""
    metas = {"n1": {"k": "a\u0000b"}, "n2": {"k": "a\\0b"}, "n3": {"k\u0000": "\\"}}
    for tag, meta in metas.items():
        assert upload(client, f"/reg/{repo}/img/{tag}", random_image(512), meta).is_success
    assert _names(_query(client, meta="k=a\u0000b", repo_prefix=repo)) == [f"{repo}/img/n1"]
    assert _names(_query(client, meta="k=a\\0b", repo_prefix=repo)) == [f"{repo}/img/n2"]
    assert _names(_query(client, has="k\u0000", repo_prefix=repo)) == [f"{repo}/img/n3"]
    assert _names(_query(client, meta="k\u0000=\\", repo_prefix=repo)) == [f"{repo}/img/n3"]


def test_pages_follow_each_other_without_gaps_or_duplicates(
    client: httpx.Client, repo: str
) -> None:
    expected = []
    for image in ("one", "two"):
        for number in range(4):
            path = f"/reg/{repo}/{image}/t{number}"
            assert upload(client, path, random_image(256), {"pool": "yes"}).is_success
            expected.append(path.removeprefix("/reg/"))
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"has": "pool", "repo_prefix": repo, "limit": 3}
        if after is not None:
            params["after"] = after
        body = _query(client, **params)
        seen += _names(body)
        after = body["next"]
        if after is None:
            break
        assert len(body["data"]) == 3
    assert seen == expected


@pytest.mark.parametrize(
    "params",
    [
        {"mta": "os=ubuntu"},
        {"meta[x]": "os=ubuntu"},
        {"meta": "os"},
        {"meta": "=ubuntu"},
        {"has": ""},
        {"meta": "os=" + "x" * 257},
        {"has": "k" * 257},
        {"meta": [f"k{n}=v" for n in range(17)]},
        {"repo_prefix": "Course_"},
        {"repo_prefix": ["a", "b"]},
        {"after": "only/two"},
        {"after": "a/b/c"},
        {"limit": 0},
        {"limit": 1001},
    ],
)
def test_bad_queries_are_400(client: httpx.Client, params: dict[str, Any]) -> None:
    response = client.get("/reg/_query", params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == "INVALID_ARGUMENT"
    assert body["error"]


def test_no_repository_can_be_named_like_the_query(client: httpx.Client) -> None:
    response = upload(client, "/reg/_query/image/tag", random_image(256))
    assert response.status_code in (400, 405), response.text


def test_openapi_describes_the_query(client: httpx.Client) -> None:
    document = client.get("/docs/openapi.json").json()
    operation = document["paths"]["/reg/_query"]["get"]
    assert operation["operationId"] == "QueryTags"
    params = {param["name"]: param for param in operation["parameters"]}
    assert set(params) == {"meta", "has", "repo_prefix", "image_prefix", "limit", "after"}
    assert params["meta"]["schema"]["type"] == "array" or "anyOf" in params["meta"]["schema"]


def test_cloudimg_ls_meta(server: RunningServer, client: httpx.Client, repo: str) -> None:
    """``cloudimg ls --meta`` across repositories and within one; a bad pair is a usage error."""
    for image, meta in (("alpha", {"os": "ubuntu", "gpu": "1"}), ("beta", {"os": "ubuntu"})):
        assert upload(client, f"/reg/{repo}/{image}/v1", random_image(512), meta).is_success
    found = json.loads(ok(cli("ls", "--meta", "os=ubuntu", "--json", server=server.base_url)))
    mine = [f"{tag['repo']}/{tag['image']}:{tag['tag']}" for tag in found if tag["repo"] == repo]
    assert mine == [f"{repo}/alpha:v1", f"{repo}/beta:v1"]
    table = ok(cli("ls", repo, "--meta", "os=ubuntu", "--has", "gpu", server=server.base_url))
    assert f"{repo}/alpha:v1" in table
    assert "beta" not in table
    assert "gpu=1 os=ubuntu" in table
    only = json.loads(
        ok(cli("ls", f"{repo}/beta", "--meta", "os=ubuntu", "--json", server=server.base_url))
    )
    assert [tag["image"] for tag in only] == ["beta"]
    assert "KEY=VALUE" in cli("ls", "--meta", "os", server=server.base_url).stderr.decode()
