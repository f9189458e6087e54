"""OIDC bearer tokens: a real issuer (discovery and JWKS over HTTP, keys made here), a
real server on both catalog backends with a policy file whose ``oidc`` section trusts
it, and tokens minted by the test. No write token file: the issuers alone close writes.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudimg.api.policy import parse_policy
from tests.conftest import RunningServer, serve_module
from tests.oci_support import EMPTY, artifact_manifest, assert_oci_error, push_blob, put_manifest
from tests.oidc_support import (
    IssuerServer,
    hs256_with,
    issuer_server,
    public_pem,
    silent_listener,
    unsigned,
)
from tests.support import random_image

DISK = random_image(32 * 1024)
READER = ("reader", "pw-" + secrets.token_hex(8))
ALL = ["pull", "push", "delete"]


@pytest.fixture(scope="module")
def keycloak(backend: str) -> Iterator[IssuerServer]:
    """An issuer as Keycloak's: groups in a ``groups`` claim (one per backend's server)."""
    with issuer_server() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def kubernetes(backend: str) -> Iterator[IssuerServer]:
    """The API server's service-account issuer."""
    with issuer_server() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def rotating(backend: str) -> Iterator[IssuerServer]:
    with issuer_server() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def limited(backend: str) -> Iterator[IssuerServer]:
    """An issuer whose keys are fetched at most once a minute."""
    with issuer_server() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def fragile(backend: str) -> Iterator[IssuerServer]:
    """An issuer the test stops."""
    with issuer_server() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def hanging(backend: str) -> Iterator[str]:
    """The URL of an issuer that takes connections and never answers."""
    with silent_listener() as url:
        yield url


def scope(glob: str, actions: list[str]) -> dict[str, Any]:
    return {"names": [glob], "actions": actions}


def everyone(glob: str) -> dict[str, Any]:
    return {"match": {}, "scopes": [{"names": [glob], "actions": ALL}]}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    backend: str,
    keycloak: IssuerServer,
    kubernetes: IssuerServer,
    rotating: IssuerServer,
    limited: IssuerServer,
    fragile: IssuerServer,
    hanging: str,
) -> Iterator[RunningServer]:
    policy = {
        "oidc": [
            {
                "issuer": keycloak.url,
                "audience": "cloudimg",
                "rules": [
                    {"match": {"groups": "team-a"}, "scopes": [scope("team-a/*", ALL)]},
                    {"match": {"sub": ["alice"]}, "scopes": [scope("shared/*", ["pull"])]},
                ],
            },
            {
                "issuer": kubernetes.url,
                "audience": "cloudimg",
                "jwks_uri": kubernetes.url + "/jwks",
                "rules": [
                    {
                        "match": {"namespace": "ci", "serviceaccount": "builder"},
                        "scopes": [{"names": "ci-images/*", "actions": ["pull", "push"]}],
                    }
                ],
            },
            {"issuer": rotating.url, "audience": "cloudimg", "refetch_interval_secs": 1,
             "rules": [everyone("rot/*")]},
            {"issuer": limited.url, "audience": "cloudimg", "refetch_interval_secs": 60,
             "rules": [everyone("lim/*")]},
            {"issuer": fragile.url, "audience": "cloudimg", "rules": [everyone("frag/*")]},
            {"issuer": hanging, "audience": "cloudimg", "jwks_uri": hanging + "/jwks",
             "rules": [everyone("hang/*")]},
        ],
    }  # fmt: skip
    secrets_dir = tmp_path_factory.mktemp("secrets")
    (secrets_dir / "policy.yaml").write_text(json.dumps(policy))
    (secrets_dir / "users").write_text(f"{READER[0]}:{READER[1]}\n")
    yield from serve_module(
        tmp_path_factory,
        backend,
        "--policy-file", str(secrets_dir / "policy.yaml"),
        "--read-auth", "basic",
        "--read-credentials-file", str(secrets_dir / "users"),
    )  # fmt: skip


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def image() -> str:
    return "i-" + secrets.token_hex(5)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(http: httpx.Client, path: str, token: str) -> httpx.Response:
    files = {"meta": ("meta.json", b"{}", "application/json"), "img": ("i.bin", DISK)}
    return http.post(path, files=files, headers=bearer(token))


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


# -- scopes ------------------------------------------------------------------------------


def test_a_token_pushes_and_pulls_within_its_scopes_only(
    http: httpx.Client, keycloak: IssuerServer, image: str
) -> None:
    token = keycloak.mint(groups=["team-a", "other"])
    assert post(http, f"/reg/team-a/{image}/v1", token).status_code == 201
    assert http.get(f"/reg/team-a/{image}/v1", headers=bearer(token)).content == DISK
    refused = post(http, f"/reg/team-b/{image}/v1", token)
    assert refused.status_code == 403, refused.text
    assert refused.json()["context"] == {"action": "push", "name": f"team-b/{image}"}
    # alice may pull shared/* by her subject; bob, of the same group, may not
    assert http.get(f"/reg/shared/{image}/v1", headers=bearer(token)).status_code == 404
    bob = keycloak.mint(sub="bob", groups=["team-a"])
    denied = http.get(f"/reg/shared/{image}/v1", headers=bearer(bob))
    assert denied.status_code == 403
    assert http.get(f"/reg/team-b/{image}/v1", headers=bearer(bob)).status_code == 403
    listing = http.get("/reg", headers=bearer(bob)).json()["data"]
    assert "team-a" in json.dumps(listing)
    assert "team-b" not in json.dumps(listing)


def test_a_token_no_rule_matches_is_authenticated_without_scope(
    http: httpx.Client, keycloak: IssuerServer, image: str
) -> None:
    token = keycloak.mint(sub="mallory", groups=["nobody"])
    response = post(http, f"/reg/team-a/{image}/v1", token)
    assert response.status_code == 403, response.text  # not 401: the token is valid
    assert http.get(f"/reg/team-a/{image}/v1", headers=bearer(token)).status_code == 403


def test_the_history_actor_is_the_subject_and_no_token_is_logged(
    server: RunningServer, http: httpx.Client, keycloak: IssuerServer, image: str
) -> None:
    token = keycloak.mint(groups=["team-a"])
    assert post(http, f"/reg/team-a/{image}/v1", token).status_code == 201
    history = http.get(f"/reg/team-a/{image}/v1/history", headers=bearer(token))
    assert [e["actor"] for e in history.json()["data"]] == ["alice"]
    assert post(http, f"/reg/team-b/{image}/v1", token).status_code == 403
    log = server.log()
    assert "refused push of team-b/" in log
    assert "oidc alice" in log
    assert token not in log
    assert token.split(".")[2] not in log


def test_a_kubernetes_service_account_token(
    http: httpx.Client, kubernetes: IssuerServer, image: str
) -> None:
    def sa_token(namespace: str, name: str, *, claim: bool = True) -> str:
        extra: dict[str, Any] = {}
        if claim:
            extra["kubernetes.io"] = {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": secrets.token_hex(8)},
                "pod": {"name": "build-1", "uid": secrets.token_hex(8)},
            }
        return kubernetes.mint(sub=f"system:serviceaccount:{namespace}:{name}", **extra)

    first = post(http, f"/reg/ci-images/{image}/v1", sa_token("ci", "builder"))
    assert first.status_code == 201, first.text
    history = http.get(
        f"/reg/ci-images/{image}/v1/history", headers=bearer(sa_token("ci", "builder"))
    )
    assert history.json()["data"][0]["actor"] == "system:serviceaccount:ci:builder"
    # the subject alone names the service account too
    assert (
        post(http, f"/reg/ci-images/{image}/v2", sa_token("ci", "builder", claim=False)).status_code
        == 201
    )
    for other in (sa_token("dev", "builder"), sa_token("ci", "deployer")):
        assert post(http, f"/reg/ci-images/{image}/v3", other).status_code == 403
    # a service-account token is not a Keycloak token: its audience must be ours too
    wrong = kubernetes.mint(
        sub="system:serviceaccount:ci:builder", aud="https://kubernetes.default.svc"
    )
    assert_invalid_token(post(http, f"/reg/ci-images/{image}/v3", wrong))


def test_v2_takes_the_token_as_the_basic_password(
    server: RunningServer, keycloak: IssuerServer, image: str
) -> None:
    token = keycloak.mint(groups=["team-a"])
    with server.client(auth=("oidc", token)) as oci:
        assert oci.get("/v2/").status_code == 200
        push_blob(oci, f"team-a/{image}", EMPTY)
        push_blob(oci, f"team-a/{image}", DISK)
        assert (
            put_manifest(oci, f"team-a/{image}", "v1", artifact_manifest(DISK)).status_code == 201
        )
        assert oci.get(f"/v2/team-a/{image}/tags/list").json()["tags"] == ["v1"]
        assert_oci_error(oci.post(f"/v2/team-b/{image}/blobs/uploads/"), 403, "DENIED")
    with server.client(headers=bearer(token)) as oci:  # a bearer token works as well
        assert oci.get(f"/v2/team-a/{image}/manifests/v1").status_code == 200
    with server.client(auth=("oidc", token[:-4] + "AAAA")) as forged:
        assert_oci_error(forged.post(f"/v2/team-a/{image}/blobs/uploads/"), 401, "UNAUTHORIZED")
    with server.client() as http:
        history = http.get(f"/reg/team-a/{image}/v1/history", headers=bearer(token))
        assert history.json()["data"][0]["actor"] == "alice"


# -- refused tokens ----------------------------------------------------------------------


def refused_tokens(issuer: IssuerServer) -> dict[str, str]:
    now = int(time.time())
    unpublished = issuer.add_key(publish=False)
    claims = issuer.claims(groups=["team-a"])
    kid, team = issuer.kid, ["team-a"]
    return {
        "expired": issuer.mint(groups=["team-a"], iat=now - 900, exp=now - 120),
        "not yet valid": issuer.mint(groups=["team-a"], nbf=now + 600),
        "issued in the future": issuer.mint(groups=["team-a"], iat=now + 600),
        "no exp": issuer.mint(groups=["team-a"], exp=None),
        "wrong issuer": issuer.mint(groups=["team-a"], iss=issuer.url + "/other"),
        "wrong audience": issuer.mint(groups=["team-a"], aud="someone-else"),
        "alg none": unsigned(claims, {"alg": "none", "typ": "JWT", "kid": issuer.kid}),
        "alg None": unsigned(claims, {"alg": "None", "kid": issuer.kid}),
        "HS256 with the public key": hs256_with(public_pem(issuer.keys[kid]), claims, kid),
        "unknown kid": issuer.mint(unpublished, groups=["team-a"]),
        "a known kid, another key": issuer.mint(unpublished, headers={"kid": kid}, groups=team),
        "a changed payload": _swap_payload(issuer.mint(groups=["x"]), claims),
    }  # fmt: skip


def _swap_payload(token: str, claims: dict[str, Any]) -> str:
    import base64

    head, _body, signature = token.split(".")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{signature}"


def test_tokens_that_do_not_verify_are_refused(
    http: httpx.Client, keycloak: IssuerServer, image: str
) -> None:
    good = keycloak.mint(groups=["team-a"])
    for reason, token in refused_tokens(keycloak).items():
        response = post(http, f"/reg/team-a/{image}/v1", token)
        assert response.status_code == 401, (reason, response.text)
        assert 'error="invalid_token"' in response.headers["www-authenticate"], reason
        assert http.get(f"/reg/team-a/{image}/v1", headers=bearer(token)).status_code == 401
    assert http.get(f"/reg/team-a/{image}/v1", headers=bearer(good)).status_code == 404


def test_keys_rotate(http: httpx.Client, rotating: IssuerServer, image: str) -> None:
    old = rotating.kid
    assert post(http, f"/reg/rot/{image}/v1", rotating.mint(old)).status_code == 201
    assert rotating.jwks_hits() == 1
    assert post(http, f"/reg/rot/{image}/v2", rotating.mint(old)).status_code == 201
    assert rotating.jwks_hits() == 1  # cached
    new = rotating.add_key("EC")
    rotating.publish_only(new)
    time.sleep(1.2)  # past the issuer's refetch_interval_secs (1)
    assert post(http, f"/reg/rot/{image}/v3", rotating.mint(new)).status_code == 201
    assert rotating.jwks_hits() == 2  # the unknown kid fetched the JWKS again
    # the old key left the JWKS: its tokens are refused from now on
    assert_invalid_token(post(http, f"/reg/rot/{image}/v4", rotating.mint(old)))
    ed = rotating.add_key("Ed25519")
    rotating.publish_only(new, ed)
    time.sleep(1.2)
    assert post(http, f"/reg/rot/{image}/v5", rotating.mint(ed)).status_code == 201
    assert post(http, f"/reg/rot/{image}/v6", rotating.mint(new)).status_code == 201


def test_unknown_kids_fetch_the_keys_at_most_once_per_interval(
    http: httpx.Client, limited: IssuerServer, image: str
) -> None:
    assert post(http, f"/reg/lim/{image}/v1", limited.mint()).status_code == 201
    assert limited.jwks_hits() == 1
    for _ in range(6):  # forged kids: refused, and none makes the server ask the issuer
        forged = limited.mint(limited.add_key(publish=False))
        assert_invalid_token(post(http, f"/reg/lim/{image}/v2", forged))
    assert limited.jwks_hits() == 1
    assert post(http, f"/reg/lim/{image}/v2", limited.mint()).status_code == 201


def test_an_issuer_that_is_down_leaves_the_cached_keys_working(
    http: httpx.Client, fragile: IssuerServer, image: str
) -> None:
    assert post(http, f"/reg/frag/{image}/v1", fragile.mint()).status_code == 201
    fragile.stop()
    assert post(http, f"/reg/frag/{image}/v2", fragile.mint()).status_code == 201
    unknown = fragile.mint(fragile.add_key(publish=False))
    for _ in range(3):  # refused at once: the fetch is refused, then not tried again
        assert_invalid_token(post(http, f"/reg/frag/{image}/v3", unknown))
    assert post(http, f"/reg/frag/{image}/v3", fragile.mint()).status_code == 201


def test_an_issuer_that_hangs_holds_up_neither_the_request_nor_others(
    server: RunningServer, keycloak: IssuerServer, hanging: str, image: str
) -> None:
    minter = IssuerServer()  # its keys sign tokens in the hanging issuer's name
    try:
        token = minter.mint(iss=hanging)
        answers: list[int] = []

        def hung_request() -> None:
            with server.client() as client:
                answers.append(post(client, f"/reg/hang/{image}/v1", token).status_code)

        waiting = threading.Thread(target=hung_request)
        waiting.start()
        with server.client() as client:  # the event loop serves others meanwhile
            good = keycloak.mint(groups=["team-a"])
            assert post(client, f"/reg/team-a/{image}/v1", good).status_code == 201
        waiting.join(timeout=60)
        assert answers == [401]  # bounded by the fetch's timeout, not hung
        with server.client() as client:
            assert_invalid_token(post(client, f"/reg/hang/{image}/v1", token))
    finally:
        minter.stop()
    assert "cannot fetch the keys of OIDC issuer" in server.log()


def test_reads_with_basic_credentials_still_work(http: httpx.Client, image: str) -> None:
    # The reader has no policy entry: authenticated, no scope; its reads are 403, not 401.
    response = http.get(f"/reg/team-a/{image}/v1", auth=READER)
    assert response.status_code == 403
    assert http.get(f"/reg/team-a/{image}/v1").status_code == 401


# -- the policy's oidc section -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("oidc: {}", "'oidc' is a list of issuers"),
        ("oidc: [{audience: x}]", "'issuer' is missing"),
        ("oidc: [{issuer: 'https://a'}]", "'audience' is missing"),
        ("oidc: [{issuer: 'http://idp.example', audience: x}]", "must be an https:// URL"),
        ("oidc: [{issuer: 'https://a', audience: x, secret: y}]", "unknown key 'secret'"),
        ("oidc: [{issuer: 'https://a', audience: x, rules: [{match: {group: a}, scopes: []}]}]",
         "unknown condition 'group'"),
        ("oidc: [{issuer: 'https://a', audience: x, rules: [{scopes: []}]}]",
         "a rule is a mapping of 'match' and 'scopes'"),
        ("oidc: [{issuer: 'https://a', audience: x, rules: [{match: {sub: []}, scopes: []}]}]",
         "'sub' is a string or a non-empty list"),
        ("oidc: [{issuer: 'https://a', audience: x, rules: [{match: {}, scopes: [{names: ['*'],"
         " actions: [push]}]}]}]",
         "is not a repo/image glob"),
        ("oidc: [{issuer: 'https://a', audience: x}, {issuer: 'https://a', audience: y}]",
         "listed twice"),
    ],
)  # fmt: skip
def test_a_malformed_oidc_section_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_policy(text)


def test_a_policy_without_tokens_nor_issuers_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("users: {}\n")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "cloudimg", "serve", "--listener-addr", "127.0.0.1:1"),
            *("--data-root", str(tmp_path / "data")),
            *("--policy-file", str(tmp_path / "policy.yaml")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1
    assert "--policy-file" in errors[0]
    assert "oidc issuer" in errors[0]


def test_the_oidc_examples_of_the_security_docs_are_valid() -> None:
    text = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    section = text.split("## Sign-in with OIDC", 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```yaml\n")[1:]]
    examples = [block for block in blocks if block.startswith("oidc:")]
    assert len(examples) >= 3
    issuers = [issuer for example in examples for issuer in parse_policy(example).issuers]
    assert {i.issuer for i in issuers} >= {
        "https://keycloak.example.org/realms/lab",
        "https://dex.example.org",
        "https://kubernetes.default.svc.cluster.local",
    }
