"""Authentication of /v2: registry clients send HTTP Basic; a write token is the password
of a push (any user name), read credentials let pulls through, challenges are Basic;
/v2 stays at the host root whatever --www-prefix says."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server, upload
from tests.oci_support import assert_oci_error
from tests.support import random_image
from tests.test_auth import READ_PASSWORD, READ_USER, WRITE_TOKEN, WRONG_TOKEN, basic, bearer

CHALLENGE = 'Basic realm="cloudimg", charset="UTF-8"'


@pytest.fixture(scope="module")
def backend() -> str:
    """Authentication happens before the catalog is touched: one backend is enough."""
    return "sqlite"


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets")
    (path / "tokens").write_text(f"ci-pipeline {WRITE_TOKEN}\n")
    (path / "credentials").write_text(f"{READ_USER}:{READ_PASSWORD}\n")
    return path


@pytest.fixture(scope="module")
def write_server(
    tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path
) -> Iterator[RunningServer]:
    """Pushes need a token; pulls are open; the web prefix does not move /v2."""
    running = start_server(
        tmp_path_factory.mktemp("write") / "data",
        "--write-token-file",
        str(secrets_dir / "tokens"),
        "--www-prefix",
        "/registry",
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def read_server(
    tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path
) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("read") / "data",
        "--write-token-file",
        str(secrets_dir / "tokens"),
        "--read-auth",
        "basic",
        "--read-credentials-file",
        str(secrets_dir / "credentials"),
    )
    yield running
    running.stop()


def test_the_version_check_challenges_a_client_without_credentials(
    write_server: RunningServer,
) -> None:
    with write_server.client() as http:
        refused = http.get("/v2/")
        assert_oci_error(refused, 401, "UNAUTHORIZED")
        assert refused.headers["www-authenticate"] == CHALLENGE
        assert http.get("/v2/", headers=basic("anyone", WRITE_TOKEN)).status_code == 200
        assert_oci_error(
            http.get("/v2/", headers=basic("anyone", WRONG_TOKEN)), 401, "UNAUTHORIZED"
        )


def test_pushes_need_a_write_token_as_the_password(write_server: RunningServer) -> None:
    with write_server.client() as http:
        for headers in ({}, basic("x", WRONG_TOKEN), basic(READ_USER, READ_PASSWORD)):
            refused = http.post("/v2/vms/authz/blobs/uploads/", headers=headers)
            assert_oci_error(refused, 401, "UNAUTHORIZED")
            assert refused.headers["www-authenticate"] == CHALLENGE
        for headers in (basic("whoever", WRITE_TOKEN), bearer(WRITE_TOKEN)):
            started = http.post("/v2/vms/authz/blobs/uploads/", headers=headers)
            assert started.status_code == 202, started.text
        # Pulls stay open where reads are open; /reg stays under its prefix.
        assert (
            upload(http, "/registry/reg/vms/authz/v1", b"q" * 600, params=None).status_code == 401
        )
        http.headers.update(bearer(WRITE_TOKEN))
        assert upload(http, "/registry/reg/vms/authz/v1", b"q" * 600).status_code == 201
    with write_server.client() as http:
        assert http.get("/v2/vms/authz/manifests/v1").status_code == 200
        assert http.get("/v2/vms/authz/tags/list").json()["tags"] == ["v1"]


def test_pulls_need_read_credentials_when_reads_are_protected(read_server: RunningServer) -> None:
    with read_server.client(headers=bearer(WRITE_TOKEN)) as http:
        assert upload(http, "/reg/vms/guarded/v1", b"g" * 700).status_code == 201
    with read_server.client() as http:
        refused = http.get("/v2/vms/guarded/manifests/v1")
        assert_oci_error(refused, 401, "UNAUTHORIZED")
        assert refused.headers["www-authenticate"] == CHALLENGE
        wrong = http.get("/v2/vms/guarded/manifests/v1", headers=basic(READ_USER, "nope"))
        assert_oci_error(wrong, 401, "UNAUTHORIZED")
        for headers in (basic(READ_USER, READ_PASSWORD), basic("pusher", WRITE_TOKEN)):
            assert http.get("/v2/vms/guarded/manifests/v1", headers=headers).status_code == 200
        denied = http.post(
            "/v2/vms/guarded/blobs/uploads/", headers=basic(READ_USER, READ_PASSWORD)
        )
        assert_oci_error(denied, 403, "DENIED")


@pytest.mark.slow
def test_skopeo_pushes_with_the_token_and_pulls_with_read_credentials(
    read_server: RunningServer, tmp_path: Path
) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo; .ci/run does)")
    data = random_image(300_000)
    with read_server.client(headers=bearer(WRITE_TOKEN)) as http:
        assert upload(http, "/reg/vms/source/v1", data).status_code == 201
    base = f"docker://127.0.0.1:{read_server.port}"
    layout = f"oci:{tmp_path / 'layout'}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [skopeo, *args], capture_output=True, text=True, timeout=300, check=False
        )

    assert run("copy", "--src-tls-verify=false", f"{base}/vms/source:v1", layout).returncode != 0
    creds = f"{READ_USER}:{READ_PASSWORD}"
    pulled = run(
        "copy", "--src-tls-verify=false", "--src-creds", creds, f"{base}/vms/source:v1", layout
    )
    assert pulled.returncode == 0, pulled.stderr
    target = f"{base}/vms/pushed:v1"
    denied = run("copy", "--dest-tls-verify=false", "--dest-creds", creds, layout, target)
    assert denied.returncode != 0
    pushed = run(
        "copy", "--dest-tls-verify=false", "--dest-creds", f"ci:{WRITE_TOKEN}", layout, target
    )
    assert pushed.returncode == 0, pushed.stderr
    with read_server.client(headers=bearer(WRITE_TOKEN)) as http:
        assert http.get("/reg/vms/pushed/v1").content == data
        history = http.get("/reg/vms/pushed/v1/history").json()["data"]
        assert history[0]["actor"] == "ci-pipeline"  # the token's name is the writer
