"""The client's OIDC token: ``--token-command`` run again near ``exp`` and after a 401,
``--token-file`` re-read when it changes. A real issuer, a real server (one backend:
the client is what is tested), tokens minted by a script the client runs.
"""

from __future__ import annotations

import json
import secrets
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from cloudimg.client import Credentials, Session
from cloudimg.client.token_source import FileToken
from tests.conftest import RunningServer, start_server
from tests.oidc_support import IssuerServer, issuer_server
from tests.support import random_image
from tests.test_client import client, failed, ok

DISK = random_image(16 * 1024)


@pytest.fixture(scope="module")
def issuer() -> Iterator[IssuerServer]:
    with issuer_server() as running:
        yield running


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, issuer: IssuerServer
) -> Iterator[RunningServer]:
    policy = {
        "oidc": [
            {
                "issuer": issuer.url,
                "audience": "cloudimg",
                "rules": [
                    {
                        "match": {"sub": ["system:serviceaccount:ci:builder"]},
                        "scopes": [{"names": ["oidc-*/*"], "actions": ["pull", "push", "delete"]}],
                    }
                ],
            }
        ]
    }
    secrets_dir = tmp_path_factory.mktemp("secrets")
    (secrets_dir / "policy.yaml").write_text(json.dumps(policy))
    running = start_server(
        tmp_path_factory.mktemp("server") / "data",
        "--policy-file",
        str(secrets_dir / "policy.yaml"),
    )
    yield running
    running.stop()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "disk.raw").write_bytes(secrets.token_bytes(256 * 1024))
    return tmp_path


def minting_script(work: Path, issuer: IssuerServer, lifetime: int, bad_first: bool = False) -> str:
    """A command that prints a token valid ``lifetime`` seconds and counts its runs
    (``bad_first``: its first token is not the issuer's)."""
    key = issuer.keys[issuer.kid]
    pem = key.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (work / "key.pem").write_bytes(pem)
    (work / "calls").write_text("")
    script = work / "mint.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time, jwt
            with open({str(work / "calls")!r}, "a") as calls:
                calls.write("x")
            runs = len(open({str(work / "calls")!r}).read())
            now = int(time.time())
            claims = {{"iss": {issuer.url!r}, "aud": "cloudimg", "iat": now,
                       "exp": now + {lifetime}, "sub": "system:serviceaccount:ci:builder"}}
            key = open({str(work / "key.pem")!r}).read()
            if {bad_first!r} and runs == 1:
                claims["aud"] = "not-cloudimg"
            print(jwt.encode(claims, key, algorithm="RS256", headers={{"kid": {issuer.kid!r}}}))
            """
        )
    )
    return f"{sys.executable} {script}"


def calls(work: Path) -> int:
    return len((work / "calls").read_text())


def test_a_token_command_runs_once_for_a_long_lived_token(
    server: RunningServer, issuer: IssuerServer, work: Path
) -> None:
    command = minting_script(work, issuer, lifetime=3600)
    env = {"CLOUDIMG_TOKEN_COMMAND": command}
    name = "oidc-a/img:v1"
    ok(client("push", "disk.raw", name, server=server.base_url, cwd=work, env=env))
    assert calls(work) == 1
    history = json.loads(
        ok(client("history", name, "--json", server=server.base_url, cwd=work, env=env))
    )
    assert history[0]["actor"] == "system:serviceaccount:ci:builder"
    refused = client("push", "disk.raw", "other/img:v1", server=server.base_url, cwd=work, env=env)
    line = failed(refused, 4)
    assert "403" in line
    assert "eyJ" not in refused.stderr.decode() + refused.stdout.decode()  # no token shown


def test_a_token_near_its_expiry_is_asked_for_again(
    server: RunningServer, issuer: IssuerServer, work: Path
) -> None:
    # 45 s of life is within the client's 60 s margin: every request asks again
    command = minting_script(work, issuer, lifetime=45)
    done = client("push", "disk.raw", "oidc-b/img:v1", "--token-command", command,
                  server=server.base_url, cwd=work)  # fmt: skip
    ok(done)
    assert calls(work) >= 2


def test_a_refused_token_is_asked_for_again(
    server: RunningServer, issuer: IssuerServer, work: Path
) -> None:
    command = minting_script(work, issuer, lifetime=3600, bad_first=True)
    env = {"CLOUDIMG_TOKEN_COMMAND": command}
    ok(client("push", "disk.raw", "oidc-c/img:v1", server=server.base_url, cwd=work, env=env))
    assert calls(work) == 2  # the first token's 401, then a new one


def test_a_token_command_that_fails_is_one_line(server: RunningServer, work: Path) -> None:
    env = {"CLOUDIMG_TOKEN_COMMAND": f"{sys.executable} -c 'raise SystemExit(3)'"}
    line = failed(
        client("push", "disk.raw", "oidc-d/img:v1", server=server.base_url, cwd=work, env=env), 1
    )
    assert "--token-command" in line
    assert "exit status 3" in line
    both = client(
        "push",
        "disk.raw",
        "oidc-d/img:v1",
        "--token-file",
        "t",
        server=server.base_url,
        cwd=work,
        env=env,
    )
    assert "exclude each other" in failed(both, 2)


def test_a_token_file_is_read_again_when_it_changes(
    server: RunningServer, issuer: IssuerServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(issuer.mint(sub="system:serviceaccount:ci:builder") + "\n")
    credentials = Credentials(
        tokens=FileToken(token_file), token_source=f"--token-file {token_file}"
    )
    with Session(server.base_url, credentials) as session:
        session.request("PUT", "/oidc-e/img/v1", write=True, content=DISK)
        # kubelet swaps in a new token (here: of another subject, to see which was sent)
        token_file.write_text(issuer.mint(sub="someone-else") + "\n")
        refused = session.raw("PUT", "/reg/oidc-e/img/v2", write=True, content=DISK)
        assert refused.status_code == 403  # the new token was sent: no scope for it
    with Session(server.base_url, Credentials(tokens=FileToken(token_file))) as session:
        assert session.raw("GET", "/reg/oidc-e/img/v1").status_code == 200
