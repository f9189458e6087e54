"""Scopes of ``--policy-file``: who may pull, push, delete and administer which names.

One real server per catalog backend, with a token file, read credentials and a policy
file; every check goes over its socket (``/reg`` and ``/v2``). The policy's parser is
also exercised directly for its glob rule and its refusals.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudimg.api.policy import parse_policy
from tests.conftest import RunningServer, serve_module, upload_raw
from tests.oci_support import (
    EMPTY,
    artifact_manifest,
    assert_oci_error,
    push_blob,
    put_manifest,
    sha256_digest,
)
from tests.support import random_image, wait_until

TOKENS = {
    "team-a-ci": "tok-" + secrets.token_hex(12),
    "team-a-ops": "tok-" + secrets.token_hex(12),
    "team-a-admin": "tok-" + secrets.token_hex(12),
    "root": "tok-" + secrets.token_hex(12),
}
UNNAMED = "tok-" + secrets.token_hex(12)
STUDENT = ("student", "pw-" + secrets.token_hex(8))
TEAM_A = ["team-a/*"]
POLICY: dict[str, Any] = {
    "tokens": {
        "team-a-ci": [
            {"names": TEAM_A, "actions": ["pull", "push"]},
            {"names": ["shared/*"], "actions": ["pull"]},
        ],
        "team-a-ops": [{"names": TEAM_A, "actions": ["pull", "push", "delete"]}],
        "team-a-admin": [{"names": TEAM_A, "actions": ["pull", "push", "delete", "admin"]}],
        "root": [{"names": "*/*", "actions": ["pull", "push", "delete", "admin"]}],
    },
    "users": {"student": [{"names": ["course-*/*"], "actions": ["pull"]}]},
}
DISK = random_image(64 * 1024)


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


STUDENT_AUTH = basic(*STUDENT)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets")
    lines = [f"{name} {token}" for name, token in TOKENS.items()] + [UNNAMED]
    (path / "tokens").write_text("\n".join(lines) + "\n")
    (path / "users").write_text(f"{STUDENT[0]}:{STUDENT[1]}\n")
    (path / "policy.yaml").write_text(json.dumps(POLICY))  # JSON is read as YAML
    return path


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, backend: str, secrets_dir: Path
) -> Iterator[RunningServer]:
    yield from serve_module(
        tmp_path_factory,
        backend,
        "--write-token-file",
        str(secrets_dir / "tokens"),
        "--read-auth",
        "basic",
        "--read-credentials-file",
        str(secrets_dir / "users"),
        "--policy-file",
        str(secrets_dir / "policy.yaml"),
    )


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def image() -> str:
    """An image name no other test uses (the repositories are the policy's)."""
    return "i-" + secrets.token_hex(5)


def post_image(
    http: httpx.Client, path: str, headers: dict[str, str], meta: dict[str, str] | None = None
) -> httpx.Response:
    """A multipart upload (``meta`` and ``img``) with these credentials."""
    files = {
        "meta": ("meta.json", json.dumps(meta or {}).encode(), "application/json"),
        "img": ("image.bin", DISK, "application/octet-stream"),
    }
    return http.post(path, files=files, headers=headers)


def seed(http: httpx.Client, path: str, meta: dict[str, str] | None = None) -> None:
    """Store a tag as ``root``, who may do everything."""
    response = post_image(http, path, bearer("root"), meta)
    assert response.status_code == 201, response.text


def assert_denied(response: httpx.Response, action: str, name: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["status"] == "PERMISSION_DENIED"
    assert body["context"] == {"action": action, "name": name}


def root_get(http: httpx.Client, path: str) -> httpx.Response:
    return http.get(path, headers=bearer("root"))


# -- /reg writes -------------------------------------------------------------------------


def test_a_token_pushes_inside_its_glob_and_nowhere_else(
    server: RunningServer, http: httpx.Client, image: str
) -> None:
    ci = bearer("team-a-ci")
    assert post_image(http, f"/reg/team-a/{image}/v1", ci).status_code == 201
    blobs = server.blob_files()
    refused = [
        post_image(http, f"/reg/other/{image}/v1", ci),
        upload_raw(http, f"/reg/other/{image}/v1", DISK, headers=ci),
        http.post(
            f"/reg/other/{image}/v1/retag",
            json={"digest": root_get(http, f"/reg/team-a/{image}/v1/meta").json()["digest"]},
            headers=ci,
        ),
    ]
    for response in refused:
        assert_denied(response, "push", f"other/{image}")
    assert root_get(http, f"/reg/other/{image}").status_code == 404  # nothing changed
    assert server.blob_files() == blobs
    log = server.log()
    assert f"refused push of other/{image} to token team-a-ci" in log
    assert all(token not in log for token in [*TOKENS.values(), UNNAMED])


def test_writes_refused_before_any_scope_are_logged_with_who_tried(
    server: RunningServer, http: httpx.Client, image: str
) -> None:
    """Read credentials are named by their user; a missing or unknown token is named as
    such (never the token it presented)."""
    stranger = "tok-" + secrets.token_hex(12)
    assert post_image(http, f"/reg/team-a/{image}/v1", STUDENT_AUTH).status_code == 403
    assert post_image(http, f"/reg/team-a/{image}/v2", {}).status_code == 401
    forged = {"Authorization": f"Bearer {stranger}"}
    assert post_image(http, f"/reg/team-a/{image}/v3", forged).status_code == 401
    oci = http.post(f"/v2/team-a/{image}/blobs/uploads/", headers=STUDENT_AUTH)
    assert oci.status_code == 403
    log = server.log()
    read_only = "(read credentials may not write)"
    assert f"refused push of team-a/{image} to user student {read_only}" in log
    assert log.count(f"refused push of team-a/{image} to no valid credentials") == 2
    assert log.count(f"refused push of team-a/{image} to user student") == 2  # /reg, /v2
    assert stranger not in log
    assert STUDENT[1] not in log
    assert root_get(http, f"/reg/team-a/{image}").status_code == 404  # nothing stored


def test_an_unnamed_token_has_no_scope(http: httpx.Client, image: str) -> None:
    response = post_image(http, f"/reg/team-a/{image}/v1", {"Authorization": f"Bearer {UNNAMED}"})
    assert_denied(response, "push", f"team-a/{image}")


def test_delete_needs_delete_and_a_history_purge_admin(http: httpx.Client, image: str) -> None:
    path = f"/reg/team-a/{image}/v1"
    seed(http, path)
    assert_denied(http.delete(path, headers=bearer("team-a-ci")), "delete", f"team-a/{image}")
    purge = {"purge": "history"}
    ops = bearer("team-a-ops")
    assert_denied(http.delete(path, params=purge, headers=ops), "admin", f"team-a/{image}")
    assert root_get(http, path).status_code == 200  # still there
    assert http.delete(path, headers=ops).status_code == 200
    seed(http, path)
    admin = bearer("team-a-admin")
    assert http.delete(path, params=purge, headers=admin).status_code == 200
    assert root_get(http, f"{path}/history").status_code == 404  # purged with the tag


def test_immutability_needs_admin(http: httpx.Client, image: str) -> None:
    path = f"/reg/team-a/{image}/v1/immutable"
    seed(http, f"/reg/team-a/{image}/v1")
    for name in ("team-a-ci", "team-a-ops"):
        assert_denied(http.put(path, headers=bearer(name)), "admin", f"team-a/{image}")
    assert root_get(http, f"/reg/team-a/{image}/v1/meta").json()["immutable"] is False
    assert http.put(path, headers=bearer("team-a-admin")).status_code == 200
    assert http.delete(path, headers=bearer("team-a-ops")).status_code == 403
    assert http.delete(path, headers=bearer("team-a-admin")).status_code == 200


# -- /reg reads and listings -------------------------------------------------------------


def test_pulls_and_listings_show_only_what_may_be_pulled(http: httpx.Client, image: str) -> None:
    marker = {"scope-test": image}
    for repo in ("course-x", "other", "team-a"):
        seed(http, f"/reg/{repo}/{image}/v1", marker)
    student = STUDENT_AUTH
    assert http.get(f"/reg/course-x/{image}/v1", headers=student).content == DISK
    assert_denied(http.get(f"/reg/other/{image}/v1", headers=student), "pull", f"other/{image}")
    assert_denied(
        http.get(f"/reg/other/{image}/v1/meta", headers=student), "pull", f"other/{image}"
    )
    assert_denied(http.get(f"/reg/other/{image}", headers=student), "pull", f"other/{image}")
    # The web page of one image is guarded as the API is (the pages' listings are not yet).
    assert http.get(f"/ui/other/{image}", headers=student).status_code == 403
    assert http.get(f"/ui/course-x/{image}", headers=student).status_code == 200

    repos = http.get("/reg", headers=student).json()["data"]
    assert "course-x" in repos
    assert all(repo.startswith("course-") for repo in repos)
    assert {"course-x", "other", "team-a"} <= set(root_get(http, "/reg").json()["data"])
    assert set(http.get("/reg", headers=bearer("team-a-ci")).json()["data"]) <= {
        "team-a",
        "shared",
    }
    # A repository the caller may pull nothing of answers as one that does not exist.
    for params in ({}, {"details": "true"}):
        hidden = http.get("/reg/other", params=params, headers=student)
        missing = http.get("/reg/no-such-repo", params=params, headers=student)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["status"] == missing.json()["status"] == "NOT_FOUND"
    assert image in http.get("/reg/course-x", headers=student).json()["data"]

    query = {"meta": f"scope-test={image}"}
    found = http.get("/reg/_query", params=query, headers=student).json()["data"]
    assert [(row["repo"], row["image"]) for row in found] == [("course-x", image)]
    everything = root_get(http, f"/reg/_query?meta=scope-test%3D{image}").json()["data"]
    assert len(everything) == 3


def test_a_changed_policy_applies_without_a_restart(
    http: httpx.Client, secrets_dir: Path, image: str
) -> None:
    seed(http, f"/reg/other/{image}/v1")
    wider = json.loads(json.dumps(POLICY))
    wider["users"]["student"].append({"names": [f"other/{image}"], "actions": ["pull"]})
    policy = secrets_dir / "policy.yaml"
    try:
        policy.write_text(json.dumps(wider))
        wait_until(
            lambda: http.get(f"/reg/other/{image}/v1", headers=STUDENT_AUTH).status_code == 200,
            "the widened policy lets the student pull",
        )
        policy.write_text("tokens: [broken")  # a broken rewrite keeps the last good policy
        assert http.get(f"/reg/other/{image}/v1", headers=STUDENT_AUTH).status_code == 200
    finally:
        policy.write_text(json.dumps(POLICY))
    wait_until(
        lambda: http.get(f"/reg/other/{image}/v1", headers=STUDENT_AUTH).status_code == 403,
        "the restored policy refuses the student again",
    )


# -- /v2 ---------------------------------------------------------------------------------


def oci_client(server: RunningServer, name: str) -> httpx.Client:
    """A registry client: the write token as the Basic password, as skopeo sends it."""
    return server.client(auth=(name, TOKENS[name]))


def test_v2_push_outside_the_scope_is_refused(server: RunningServer, image: str) -> None:
    with oci_client(server, "team-a-ci") as ci:
        push_blob(ci, f"team-a/{image}", EMPTY)
        push_blob(ci, f"team-a/{image}", DISK)
        assert put_manifest(ci, f"team-a/{image}", "v1", artifact_manifest(DISK)).status_code == 201
        refused = [
            ci.post(f"/v2/other/{image}/blobs/uploads/"),
            put_manifest(ci, f"other/{image}", "v1", artifact_manifest(DISK)),
            ci.delete(f"/v2/team-a/{image}/manifests/v1"),
        ]
    for response, action, name in zip(
        refused,
        ["push", "push", "delete"],
        [f"other/{image}", f"other/{image}", f"team-a/{image}"],
        strict=True,
    ):
        body = assert_oci_error(response, 403, "DENIED")
        assert body["detail"] == {"action": action, "name": name}
    with server.client() as http:
        assert root_get(http, f"/reg/other/{image}").status_code == 404
        assert root_get(http, f"/reg/team-a/{image}/v1").content == DISK


def test_v2_catalog_and_pulls_are_filtered(server: RunningServer, image: str) -> None:
    with server.client() as http:
        for repo in ("course-x", "other"):
            seed(http, f"/reg/{repo}/{image}/v1")
        catalog = http.get("/v2/_catalog", params={"n": 1000}, headers=STUDENT_AUTH)
        names = catalog.json()["repositories"]
        assert f"course-x/{image}" in names
        assert all(name.startswith("course-") for name in names)
        everything = http.get("/v2/_catalog", params={"n": 1000}, headers=bearer("root"))
        assert f"other/{image}" in everything.json()["repositories"]
        tags = http.get(f"/v2/other/{image}/tags/list", headers=STUDENT_AUTH)
        assert_oci_error(tags, 403, "DENIED")
        assert http.get(f"/v2/course-x/{image}/tags/list", headers=STUDENT_AUTH).status_code == 200


def test_a_mount_from_a_repository_the_caller_cannot_pull_does_not_mount(
    server: RunningServer, image: str
) -> None:
    blob = random_image(4096)
    digest = sha256_digest(blob)
    with oci_client(server, "root") as root:
        for repo in ("other", "shared"):
            push_blob(root, f"{repo}/{image}", blob)
            put = put_manifest(root, f"{repo}/{image}", "v1", artifact_manifest(blob))
            assert put.status_code == 201, put.text
        push_blob(root, f"shared/{image}-untaken", DISK)  # uploaded, no manifest took it
    with oci_client(server, "team-a-ci") as ci:
        target = f"/v2/team-a/{image}/blobs/uploads/"
        hidden = ci.post(target, params={"mount": digest, "from": f"other/{image}"})
        assert hidden.status_code == 202  # a new upload session instead of the mount
        assert "/blobs/uploads/" in hidden.headers["location"]
        unnamed = ci.post(target, params={"mount": digest})
        assert unnamed.status_code == 202  # no 'from': nothing the caller may pull to check
        # 'from' must hold the bytes: a pullable name is no key to every digest.
        elsewhere = ci.post(target, params={"mount": digest, "from": "shared/nothing-here"})
        assert elsewhere.status_code == 202
        # Another name's finished upload is not the caller's, nor stored: no mount.
        untaken = {"mount": sha256_digest(DISK), "from": f"shared/{image}-untaken"}
        assert ci.post(target, params=untaken).status_code == 202
        pullable = ci.post(target, params={"mount": digest, "from": f"shared/{image}"})
        assert pullable.status_code == 201
        assert pullable.headers["docker-content-digest"] == digest
        # What was mounted is what its manifest may name.
        put = put_manifest(ci, f"team-a/{image}", "v1", artifact_manifest(blob))
        assert put.status_code == 201, put.text


# -- what a write may name by digest -----------------------------------------------------


def test_a_manifest_names_only_blobs_its_pusher_may_pull_or_uploaded_itself(
    server: RunningServer, image: str
) -> None:
    hidden, shared, theirs = random_image(8192), random_image(8192), random_image(8192)
    with oci_client(server, "root") as root:
        push_blob(root, f"other/{image}", hidden)
        assert put_manifest(root, f"other/{image}", "v1", artifact_manifest(hidden)).is_success
        push_blob(root, f"shared/{image}", shared)
        assert put_manifest(root, f"shared/{image}", "v1", artifact_manifest(shared)).is_success
        push_blob(root, f"other/{image}-b", theirs)  # finished, no manifest took it yet
    blobs = server.blob_files()
    target = f"team-a/{image}"
    with oci_client(server, "team-a-ci") as ci:
        for disk in (hidden, theirs, random_image(512)):  # stored, uploaded elsewhere, none
            body = assert_oci_error(
                put_manifest(ci, target, "v1", artifact_manifest(disk)), 403, "DENIED"
            )
            assert body["detail"] == {"action": "pull", "digest": sha256_digest(disk)}
        # An index's child pushed by digest is held to the same rule.
        child = artifact_manifest(hidden)
        by_digest = ci.put(
            f"/v2/{target}/manifests/{sha256_digest(child)}",
            content=child,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert assert_oci_error(by_digest, 403, "DENIED")["detail"]["digest"] == sha256_digest(
            hidden
        )
        with server.client() as http:
            assert root_get(http, f"/reg/{target}").status_code == 404  # nothing stored
        assert server.blob_files() == blobs
        # A blob of a name it may pull, and one it uploaded to the name itself: both fine.
        assert put_manifest(ci, target, "v1", artifact_manifest(shared)).status_code == 201
        own = random_image(8192)
        push_blob(ci, target, own)
        assert put_manifest(ci, target, "v2", artifact_manifest(own)).status_code == 201
    with oci_client(server, "root") as root:  # the other team's upload was left alone
        assert put_manifest(root, f"other/{image}-b", "v1", artifact_manifest(theirs)).is_success
    with server.client() as http:
        assert root_get(http, f"/reg/{target}/v1").content == shared
        assert root_get(http, f"/reg/{target}/v2").content == own


def test_a_finished_upload_answers_only_under_its_own_name(
    server: RunningServer, image: str
) -> None:
    blob = random_image(4096)
    digest = sha256_digest(blob)
    with oci_client(server, "team-a-ci") as ci:
        push_blob(ci, f"team-a/{image}", blob)
        assert ci.head(f"/v2/team-a/{image}/blobs/{digest}").status_code == 200
        assert ci.get(f"/v2/team-a/{image}/blobs/{digest}").content == blob
        assert ci.head(f"/v2/team-a/{image}-x/blobs/{digest}").status_code == 404
    with oci_client(server, "root") as root:
        assert_oci_error(root.get(f"/v2/shared/{image}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    with server.client() as http:  # a reader of course-* does not get it by digest either
        response = http.get(f"/v2/course-x/{image}/blobs/{digest}", headers=STUDENT_AUTH)
        assert_oci_error(response, 404, "BLOB_UNKNOWN")


def test_a_retag_source_needs_pull_on_a_name_that_holds_it(
    server: RunningServer, http: httpx.Client, image: str
) -> None:
    hidden_disk, shared_disk = random_image(4096), random_image(4096)  # held by one name each
    for repo, disk in (("other", hidden_disk), ("shared", shared_disk)):
        assert upload_raw(http, f"/reg/{repo}/{image}/v1", disk, headers=bearer("root")).is_success
    hidden = root_get(http, f"/reg/other/{image}/v1/meta").json()
    pullable = root_get(http, f"/reg/shared/{image}/v1/meta").json()
    ci = bearer("team-a-ci")
    target = f"/reg/team-a/{image}/v1/retag"
    for digest in (hidden["digest"], hidden["sha256"], "blake3:" + "0" * 64):
        response = http.post(target, json={"digest": digest}, headers=ci)
        assert response.status_code == 403, response.text
        assert response.json()["context"] == {"action": "pull", "digest": digest}
    assert root_get(http, f"/reg/team-a/{image}").status_code == 404  # nothing changed
    assert f"refused push of team-a/{image} to token team-a-ci (may not pull the source" in (
        server.log()
    )
    assert http.post(target, json={"digest": pullable["digest"]}, headers=ci).status_code == 201
    assert root_get(http, f"/reg/team-a/{image}/v1").content == shared_disk
    # A rollback within the image: only its own retained history holds the old bytes.
    first, second = random_image(4096), random_image(4096)
    assert upload_raw(http, f"/reg/team-a/{image}/v2", first, headers=ci).status_code == 201
    old = http.get(f"/reg/team-a/{image}/v2/meta", headers=ci).json()["digest"]
    assert upload_raw(http, f"/reg/team-a/{image}/v2", second, headers=ci).status_code == 201
    rollback = {"digest": old}
    assert http.post(f"/reg/team-a/{image}/v2/retag", json=rollback, headers=ci).status_code == 201
    assert http.get(f"/reg/team-a/{image}/v2", headers=ci).content == first


# -- the web pages -------------------------------------------------------------------------


def test_the_pages_list_only_what_the_caller_may_pull(http: httpx.Client, image: str) -> None:
    marker = {"page-scope": image}
    for repo in ("course-x", "other"):
        seed(http, f"/reg/{repo}/{image}/v1", marker)
    student = STUDENT_AUTH
    index = http.get("/ui/", headers=student)
    assert index.status_code == 200
    assert "course-x" in index.text
    assert "/ui/other" not in index.text
    assert "/ui/other" in root_get(http, "/ui/").text
    hidden = http.get("/ui/other", headers=student)
    assert hidden.status_code == http.get("/ui/no-such-repo", headers=student).status_code == 404
    assert image not in hidden.text
    assert image in http.get("/ui/course-x", headers=student).text
    query = http.get("/ui/_query", params={"q": f"page-scope={image}"}, headers=student)
    assert f"/ui/course-x/{image}/v1" in query.text
    assert f"/ui/other/{image}" not in query.text
    everything = root_get(http, f"/ui/_query?q=page-scope%3D{image}").text
    assert f"/ui/other/{image}/v1" in everything
    for page in (f"/ui/other/{image}", f"/ui/other/{image}/v1"):
        assert http.get(page, headers=student).status_code == 403
    # The history's digest references (the tag page's rollback and download links).
    digest = root_get(http, f"/reg/other/{image}/v1/meta").json()["digest"]
    assert_denied(
        http.get(f"/reg/other/{image}/{digest}", headers=student), "pull", f"other/{image}"
    )
    assert_denied(
        http.get(f"/reg/other/{image}/v1/history", headers=student), "pull", f"other/{image}"
    )


def test_events_show_only_what_the_caller_may_pull(http: httpx.Client, image: str) -> None:
    seed(http, f"/reg/course-x/{image}/v1")
    seed(http, f"/reg/other/{image}/v1")
    newest = root_get(http, "/reg/_events?limit=1000").json()
    subjects = {event["subject"] for event in newest["data"]}
    assert {f"course-x/{image}:v1", f"other/{image}:v1"} <= subjects
    seen = http.get("/reg/_events", params={"limit": 1000}, headers=STUDENT_AUTH).json()
    shown = {event["subject"] for event in seen["data"]}
    assert f"course-x/{image}:v1" in shown
    assert not [s for s in shown if "/" in s and not s.startswith("course-")]
    assert seen["next"] == newest["next"]


# -- audit ---------------------------------------------------------------------------------


def test_every_accepted_write_is_logged_once_with_the_credential_name(
    server: RunningServer, http: httpx.Client, image: str
) -> None:
    name, path = f"team-a/{image}", f"/reg/team-a/{image}"
    admin = bearer("team-a-admin")
    assert post_image(http, f"{path}/v1", admin).status_code == 201
    assert upload_raw(http, f"{path}/v2", random_image(4096), headers=admin).status_code == 201
    digest = http.get(f"{path}/v1/meta", headers=admin).json()["digest"]
    assert http.post(f"{path}/v3/retag", json={"digest": digest}, headers=admin).status_code == 201
    retagged = http.get(f"{path}/v3/history", headers=admin).json()["data"]  # before its purge
    assert http.put(f"{path}/v1/immutable", headers=admin).status_code == 200
    assert http.delete(f"{path}/v1/immutable", headers=admin).status_code == 200
    assert http.delete(f"{path}/v2", headers=admin).status_code == 200
    assert http.delete(f"{path}/v3", params={"purge": "history"}, headers=admin).status_code == 200
    blob = random_image(4096)
    with oci_client(server, "team-a-admin") as oci:
        push_blob(oci, name, blob)
        assert put_manifest(oci, name, "o1", artifact_manifest(blob)).status_code == 201
        loose = random_image(1024)
        push_blob(oci, name, loose)
        assert oci.delete(f"/v2/{name}/blobs/{sha256_digest(loose)}").status_code == 202
        assert oci.delete(f"/v2/{name}/manifests/o1").status_code == 202
    history = {
        tag: http.get(f"{path}/{tag}/history", headers=admin).json()["data"]
        for tag in ("v1", "v2", "o1")
    }
    log = server.log()
    expected = [
        f"accepted push of {name} by token team-a-admin: upload of blake3:",  # v1, v2
        f"accepted push of {name} by token team-a-admin: retag of {digest} to tag v3",
        f"accepted admin of {name} by token team-a-admin: tag v1 made immutable",
        f"accepted admin of {name} by token team-a-admin: tag v1 released",
        f"accepted delete of {name} by token team-a-admin: tag v2",
        f"accepted delete of {name} by token team-a-admin: tag v3 and its history (purge)",
        f"accepted push of {name} by token team-a-admin: manifest sha256:",
        f"accepted delete of {name} by token team-a-admin: blob {sha256_digest(loose)}",
        f"accepted delete of {name} by token team-a-admin: manifest o1",
    ]
    for line, count in zip(expected, [2, 1, 1, 1, 1, 1, 1, 1, 1], strict=True):
        assert log.count(line) == count, line
    assert log.count(f"accepted push of {name} ") + log.count(f"accepted admin of {name} ") + (
        log.count(f"accepted delete of {name} ")
    ) == sum([2, 1, 1, 1, 1, 1, 1, 1, 1])
    assert all(token not in log for token in [*TOKENS.values(), UNNAMED])
    # The history's actor of every write path is the token's name.
    actors = {entry["actor"] for entries in [*history.values(), retagged] for entry in entries}
    assert actors == {"team-a-admin"}
    actions = {entry["action"] for entry in history["v1"]}
    assert {"created", "immutable", "released"} <= actions
    assert [entry["action"] for entry in retagged] == ["created"]  # the retag made v3
    assert {entry["action"] for entry in history["o1"]} == {"created", "deleted"}


def test_a_committed_push_records_the_token_name(server: RunningServer, image: str) -> None:
    """``cloudimg push``'s path: a /v2 upload committed by a retag of its sha256."""
    blob = random_image(4096)
    with oci_client(server, "team-a-ci") as ci:
        push_blob(ci, f"team-a/{image}", blob)
    with server.client() as http:
        path = f"/reg/team-a/{image}/v1"
        retag = http.post(
            f"{path}/retag", json={"digest": sha256_digest(blob)}, headers=bearer("team-a-ci")
        )
        assert retag.status_code == 201, retag.text
        entry = root_get(http, f"{path}/history").json()["data"][0]
        assert (entry["action"], entry["actor"]) == ("created", "team-a-ci")
    log = server.log()
    assert f"accepted push of team-a/{image} by token team-a-ci: committed upload of" in log


# -- the policy file ---------------------------------------------------------------------


def test_a_star_never_crosses_the_slash() -> None:
    policy = parse_policy(
        "tokens: {ci: [{names: ['course-*/*', 'team-a/ub?ntu'], actions: [push]}]}"
    )
    grants = policy.grants("token", "ci")
    assert grants.allows("push", "course-1", "ubuntu")
    assert grants.allows("push", "team-a", "ubuntu")
    assert not grants.allows("push", "team-a", "debian")
    assert not grants.allows("pull", "course-1", "ubuntu")  # push does not imply pull
    assert not policy.grants("token", None).allows("push", "course-1", "ubuntu")
    assert not policy.grants("user", "ci").allows("push", "course-1", "ubuntu")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty"),
        ("tokens: [", "not YAML or JSON"),
        ("tokenz: {}", "unknown key 'tokenz'"),
        ("tokens: {ci: [{names: ['*'], actions: [push]}]}", "is not a repo/image glob"),
        ("tokens: {ci: [{names: ['a/b/c'], actions: [push]}]}", "is not a repo/image glob"),
        ("tokens: {ci: [{names: ['a/*'], actions: [write]}]}", "unknown action 'write'"),
        ("users: {bob: [{names: ['a/*'], actions: [push]}]}", "read credentials may only pull"),
    ],
)
def test_a_malformed_policy_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_policy(text)


def test_a_malformed_policy_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(f"ci {TOKENS['root']}\n")
    (tmp_path / "policy.yaml").write_text("tokens: {ci: [{names: ['*'], actions: [push]}]}\n")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "cloudimg", "serve", "--listener-addr", "127.0.0.1:1"),
            *("--data-root", str(tmp_path / "data")),
            *("--write-token-file", str(tmp_path / "tokens")),
            *("--policy-file", str(tmp_path / "policy.yaml")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1
    assert "--policy-file" in errors[0]
    assert "repo/image glob" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # refused before touching the data root
    assert TOKENS["root"] not in result.stderr


def test_the_policy_of_the_security_docs_is_valid() -> None:
    text = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    section = text.split("## Scopes: the policy file", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = parse_policy(example)
    assert policy.grants("token", "ci-team-a").allows("push", "team-a", "ubuntu")
    assert not policy.grants("token", "ci-team-a").allows("push", "team-b", "ubuntu")
    assert policy.grants("user", "student").allows("pull", "course-7", "debian")
