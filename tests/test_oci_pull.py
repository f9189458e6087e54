"""The OCI face, pull side, over plain HTTP on both catalog backends: every /reg image
pulls as a deterministic KubeVirt containerDisk; names, digests, ranges, pagination,
errors in the spec's shape."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import RunningServer, upload
from tests.oci_support import assert_oci_error, disk_in_layer, manifest_of, sha256_digest
from tests.support import blake3_hex, random_image


def _hashed_lines(server: RunningServer, blake3_hex: str) -> int:
    return len(re.findall(f"containerDisk layer of blake3:{blake3_hex} hashed", server.log()))


def test_version_check_answers_with_the_api_version(client: httpx.Client) -> None:
    for path in ("/v2/", "/v2"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json() == {}
        assert response.headers["docker-distribution-api-version"] == "registry/2.0"


def test_a_reg_image_pulls_as_a_containerdisk(client: httpx.Client, repo: str) -> None:
    data = random_image(70_000) + b"tail"
    assert upload(client, f"/reg/{repo}/fedora/f40", data).status_code == 201
    manifest, digest = manifest_of(client, f"{repo}/fedora", "f40")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["schemaVersion"] == 2
    (layer_desc,) = manifest["layers"]
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    layer = client.get(f"/v2/{repo}/fedora/blobs/{layer_desc['digest']}")
    assert layer.status_code == 200
    assert layer.headers["docker-content-digest"] == layer_desc["digest"]
    assert sha256_digest(layer.content) == layer_desc["digest"]
    assert len(layer.content) == layer_desc["size"]
    disk, info = disk_in_layer(layer.content)
    assert disk == data
    assert (info.uid, info.gid, info.mtime) == (107, 107, 0)
    config = client.get(f"/v2/{repo}/fedora/blobs/{manifest['config']['digest']}")
    assert config.status_code == 200
    assert sha256_digest(config.content) == manifest["config"]["digest"]
    assert config.json()["rootfs"]["diff_ids"] == [layer_desc["digest"]]
    assert "created" not in config.json()
    # By digest: the same bytes; HEAD: the same fields, no body.
    by_digest = client.get(f"/v2/{repo}/fedora/manifests/{digest}")
    assert by_digest.status_code == 200
    assert by_digest.json() == manifest
    head = client.head(f"/v2/{repo}/fedora/manifests/f40")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["docker-content-digest"] == digest
    assert head.headers["content-length"] == str(len(by_digest.content))
    head_layer = client.head(f"/v2/{repo}/fedora/blobs/{layer_desc['digest']}")
    assert head_layer.headers["content-length"] == str(layer_desc["size"])


def test_layer_ranges_cover_the_frame_and_the_disk(client: httpx.Client, repo: str) -> None:
    data = random_image(5000)
    assert upload(client, f"/reg/{repo}/ranged/v1", data).status_code == 201
    manifest, _ = manifest_of(client, f"{repo}/ranged", "v1")
    url = f"/v2/{repo}/ranged/blobs/{manifest['layers'][0]['digest']}"
    whole = client.get(url).content
    for first, last in ((0, 9), (1000, 1100), (1020, 6200), (len(whole) - 10, len(whole) - 1)):
        part = client.get(url, headers={"Range": f"bytes={first}-{last}"})
        assert part.status_code == 206
        assert part.content == whole[first : last + 1]
        assert part.headers["content-range"] == f"bytes {first}-{last}/{len(whole)}"
    beyond = client.get(url, headers={"Range": f"bytes={len(whole)}-"})
    assert beyond.status_code == 416


def test_the_same_bytes_give_the_same_manifest_and_hash_once(
    client: httpx.Client, server: RunningServer, repo: str
) -> None:
    data = random_image(40_000)
    b3 = blake3_hex(data)
    assert upload(client, f"/reg/{repo}/same/one", data).status_code == 201
    assert upload(client, f"/reg/{repo}/other/two", data).status_code == 201
    first, digest1 = manifest_of(client, f"{repo}/same", "one")
    _, digest2 = manifest_of(client, f"{repo}/other", "two")
    assert digest1 == digest2
    assert upload(client, f"/reg/{repo}/same/one", data).status_code == 201  # re-upload
    for _ in range(3):
        assert manifest_of(client, f"{repo}/same", "one")[1] == digest1
        client.get(f"/v2/{repo}/same/blobs/{first['layers'][0]['digest']}")
    assert _hashed_lines(server, b3) == 1


def test_digests_are_served_only_in_images_that_hold_them(client: httpx.Client, repo: str) -> None:
    assert upload(client, f"/reg/{repo}/holder/v1", random_image(3000)).status_code == 201
    assert upload(client, f"/reg/{repo}/nother/v1", random_image(3000)).status_code == 201
    manifest, digest = manifest_of(client, f"{repo}/holder", "v1")
    assert_oci_error(client.get(f"/v2/{repo}/nother/manifests/{digest}"), 404, "MANIFEST_UNKNOWN")
    layer = manifest["layers"][0]["digest"]
    assert_oci_error(client.get(f"/v2/{repo}/nother/blobs/{layer}"), 404, "BLOB_UNKNOWN")
    unknown = "sha256:" + "0" * 64
    assert_oci_error(client.get(f"/v2/{repo}/holder/blobs/{unknown}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{repo}/nother/blobs/{layer}").status_code == 404


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/ab/fedora/manifests/f40", 400, "NAME_INVALID"),
        ("/v2/Vms/fedora/manifests/f40", 400, "NAME_INVALID"),
        ("/v2/vms/fedora/sub/manifests/f40", 400, "NAME_INVALID"),
        ("/v2/vms/fedora/sub/tags/list", 400, "NAME_INVALID"),
        ("/v2/vms/fedora/manifests/x", 400, "TAG_INVALID"),
        ("/v2/vms/fedora/manifests/UPPER", 400, "TAG_INVALID"),
        ("/v2/vms/fedora/manifests/sha256:abc", 400, "DIGEST_INVALID"),
        (f"/v2/vms/fedora/manifests/sha512:{'a' * 128}", 400, "UNSUPPORTED"),
        ("/v2/vms/fedora/blobs/nonsense", 400, "DIGEST_INVALID"),
        ("/v2/vms/nosuchimage/manifests/latest", 404, "MANIFEST_UNKNOWN"),
        ("/v2/vms/nosuchimage/tags/list", 404, "NAME_UNKNOWN"),
        ("/v2/nothing-here", 404, "NAME_UNKNOWN"),
        ("/v2/_catalog?n=-1", 400, "UNSUPPORTED"),
        ("/v2/_catalog?n=x", 400, "UNSUPPORTED"),
    ],
)
def test_bad_requests_get_the_spec_codes(
    client: httpx.Client, path: str, status: int, code: str
) -> None:
    assert_oci_error(client.get(path), status, code)


def test_tags_and_catalog_paginate(client: httpx.Client, repo: str) -> None:
    tags = ["v1", "v10", "v2", "v3.1", "zz"]
    for tag in tags:
        assert upload(client, f"/reg/{repo}/paged/{tag}", tag.encode() * 100).status_code == 201
    assert upload(client, f"/reg/{repo}/second/v1", b"x" * 600).status_code == 201
    listing = client.get(f"/v2/{repo}/paged/tags/list")
    assert listing.json() == {"name": f"{repo}/paged", "tags": sorted(tags)}
    seen: list[str] = []
    url: str | None = f"/v2/{repo}/paged/tags/list?n=2"
    while url is not None:
        page = client.get(url)
        assert page.status_code == 200
        assert len(page.json()["tags"]) <= 2
        seen += page.json()["tags"]
        link = page.headers.get("link")
        url = None if link is None else re.fullmatch(r'<([^>]+)>; rel="next"', link).group(1)  # type: ignore[union-attr]
    assert seen == sorted(tags)
    assert client.get(f"/v2/{repo}/paged/tags/list?n=0").json()["tags"] == []
    last = client.get(f"/v2/{repo}/paged/tags/list", params={"last": "v2"})
    assert last.json()["tags"] == ["v3.1", "zz"]
    catalog = client.get("/v2/_catalog").json()["repositories"]
    assert [f"{repo}/paged", f"{repo}/second"] == [
        name for name in catalog if name.startswith(repo)
    ]
    after = client.get("/v2/_catalog", params={"n": 1, "last": f"{repo}/paged"})
    assert after.json()["repositories"][:1] == [f"{repo}/second"]
    # Following the links one entry at a time from the repository's start.
    first = client.get("/v2/_catalog", params={"n": 1, "last": f"{repo}/"})
    assert first.json()["repositories"] == [f"{repo}/paged"]
    link = re.fullmatch(r'<([^>]+)>; rel="next"', first.headers["link"])
    assert link is not None
    assert client.get(link.group(1)).json()["repositories"] == [f"{repo}/second"]


def test_a_deleted_tag_is_gone_from_v2(client: httpx.Client, repo: str) -> None:
    assert upload(client, f"/reg/{repo}/going/v1", random_image(2000)).status_code == 201
    manifest_of(client, f"{repo}/going", "v1")
    assert client.delete(f"/reg/{repo}/going/v1").status_code == 200
    assert_oci_error(client.get(f"/v2/{repo}/going/manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_v2_stays_out_of_the_openapi_document(client: httpx.Client) -> None:
    paths = client.get("/docs/openapi.json").json()["paths"]
    assert paths
    assert not [path for path in paths if path.startswith("/v2")]


@pytest.mark.slow
def test_manifest_digest_is_stable_across_restart(
    server_factory: Callable[..., RunningServer],
) -> None:
    data = random_image(100_000)
    first = server_factory()
    with first.client() as http:
        assert upload(http, "/reg/vms/stable/v1", data).status_code == 201
        _, digest = manifest_of(http, "vms/stable", "v1")
    first.stop()
    second = server_factory(data_root=first.data_root)
    with second.client() as http:
        assert manifest_of(http, "vms/stable", "v1")[1] == digest
    b3 = blake3_hex(data)
    assert _hashed_lines(second, b3) == 0, "a later server hashed the layer again"
