"""The scope matrix: every route of ``/reg``, ``/v2`` and the web pages, asked by four callers.

The routes come from the application's own route table (``app.routes``, not the OpenAPI
document, which leaves ``/v2`` and the pages out), and :data:`TABLE` must classify every
one of them: a route added without an entry here fails
:func:`test_every_route_has_an_entry`, and an entry whose route is gone fails it too.

Each entry says what the route needs (``pull``, ``push``, ``delete``, ``admin`` on a
name, any credential for a listing, nothing for an open route) and how to make one real
request to it (seeding what it needs first, as ``root``). Every request is then sent as

- ``in-scope``: a token with every action on ``mtx/*``, the names the requests touch;
- ``out-of-scope``: a token with every action on ``elsewhere/*`` only;
- ``read-only``: Basic read credentials with ``pull`` on ``mtx/*``;
- ``anonymous``: no credentials,

refused ones first (so they run on the state the in-scope request then changes), and
each must get the status its class says, against one real server per catalog backend
with ``--read-auth basic`` (so reads are checked too). An accepted write must also leave
its audit line, once.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudimg.api.app import create_app
from cloudimg.config import Settings
from tests.conftest import RunningServer, serve_module
from tests.oci_support import OCI_MANIFEST, artifact_manifest, push_blob, sha256_digest
from tests.support import random_image

TOKENS = {name: "tok-" + secrets.token_hex(12) for name in ("in-scope", "out-of-scope", "root")}
READER = ("reader", "pw-" + secrets.token_hex(8))
ALL = ["pull", "push", "delete", "admin"]
POLICY = {
    "tokens": {
        "in-scope": [{"names": ["mtx/*"], "actions": ALL}],
        "out-of-scope": [{"names": ["elsewhere/*"], "actions": ALL}],
        "root": [{"names": ["*/*"], "actions": ALL}],
    },
    "users": {READER[0]: [{"names": ["mtx/*"], "actions": ["pull"]}]},
}
CALLERS = ("anonymous", "read-only", "out-of-scope", "in-scope")
"""In the order they ask: the refused ones first, the in-scope one (which may change
what the others saw) last."""


def _headers(caller: str) -> dict[str, str]:
    if caller == "anonymous":
        return {}
    if caller == "read-only":
        encoded = base64.b64encode(f"{READER[0]}:{READER[1]}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}
    return {"Authorization": f"Bearer {TOKENS[caller]}"}


# -- what each route needs, and one real request to it ---------------------------------


@dataclass
class Ctx:
    """One case's names and the ``root`` client that seeds what its request needs."""

    root: httpx.Client
    image: str = field(default_factory=lambda: "c-" + secrets.token_hex(5))
    disk: bytes = field(default_factory=lambda: random_image(8192))

    @property
    def name(self) -> str:
        return f"mtx/{self.image}"

    def seed(self, tag: str = "v1") -> dict[str, Any]:
        """A tag of ``mtx/<image>`` holding ``disk``; its ``/meta``."""
        response = self.root.put(
            f"/reg/{self.name}/{tag}",
            content=self.disk,
            headers={"content-type": "application/octet-stream", "cloudimg-meta": '{"k": "v"}'},
        )
        assert response.status_code == 201, response.text
        meta: dict[str, Any] = self.root.get(f"/reg/{self.name}/{tag}/meta").json()
        return meta

    def session(self) -> str:
        """A new upload session of ``mtx/<image>``: its path."""
        response = self.root.post(f"/v2/{self.name}/blobs/uploads/")
        assert response.status_code == 202, response.text
        return str(response.headers["location"])


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """What a route needs, and how to ask it once (after seeding what it needs)."""

    needs: str
    """``pull``, ``push``, ``delete``, ``admin`` (on the name), ``listing`` (any
    credential; filtered, never refused), ``repo-listing`` (a repository's images:
    filtered for a credential that may pull something of it, 404 as a missing repository
    for others), ``signed-in`` (any credential, no name) or
    ``open`` (nothing)."""
    make: Callable[[Ctx], Request]
    ok: int = 200
    """The status the in-scope caller gets (``open``: every caller)."""
    audited: bool = True
    """Whether an accepted write leaves an audit line (upload-session steps do not:
    they name nothing until a manifest or retag takes their bytes)."""


def _get(url: str) -> Callable[[Ctx], Request]:
    return lambda _ctx: Request("GET", url)


def _seeded(method: str, suffix: str = "", **kwargs: Any) -> Callable[[Ctx], Request]:
    """``method`` on ``/reg/mtx/<image>/v1<suffix>`` once the tag exists."""

    def make(ctx: Ctx) -> Request:
        ctx.seed()
        return Request(method, f"/reg/{ctx.name}/v1{suffix}", kwargs)

    return make


def _at(method: str, template: str) -> Callable[[Ctx], Request]:
    """``method`` on ``template`` (``{name}``: ``mtx/<image>``) once ``v1`` exists."""

    def make(ctx: Ctx) -> Request:
        ctx.seed()
        return Request(method, template.format(name=ctx.name))

    return make


def _upload_multipart(ctx: Ctx) -> Request:
    files = {
        "meta": ("meta.json", b"{}", "application/json"),
        "img": ("image.bin", ctx.disk, "application/octet-stream"),
    }
    return Request("POST", f"/reg/{ctx.name}/v1", {"files": files})


def _upload_raw(ctx: Ctx) -> Request:
    headers = {"content-type": "application/octet-stream"}
    return Request("PUT", f"/reg/{ctx.name}/v1", {"content": ctx.disk, "headers": headers})


def _retag(ctx: Ctx) -> Request:
    digest = ctx.seed()["digest"]
    return Request("POST", f"/reg/{ctx.name}/v2/retag", {"json": {"digest": digest}})


def _release(ctx: Ctx) -> Request:
    ctx.seed()
    assert ctx.root.put(f"/reg/{ctx.name}/v1/immutable").status_code == 200
    return Request("DELETE", f"/reg/{ctx.name}/v1/immutable")


def _v2(suffix: str) -> Callable[[Ctx], Request]:
    """GET of ``/v2/mtx/<image>/<suffix>`` once ``v1`` exists (``{sha}``: its sha256)."""

    def make(ctx: Ctx) -> Request:
        sha = ctx.seed()["sha256"]
        return Request("GET", f"/v2/{ctx.name}/" + suffix.format(sha=sha))

    return make


def _head(make: Callable[[Ctx], Request]) -> Callable[[Ctx], Request]:
    return lambda ctx: Request("HEAD", make(ctx).url)


def _put_manifest(ctx: Ctx) -> Request:
    push_blob(ctx.root, ctx.name, ctx.disk)  # a finished upload to the name
    headers = {"Content-Type": OCI_MANIFEST}
    body = artifact_manifest(ctx.disk)
    return Request("PUT", f"/v2/{ctx.name}/manifests/v1", {"content": body, "headers": headers})


def _delete_blob(ctx: Ctx) -> Request:
    push_blob(ctx.root, ctx.name, ctx.disk)
    return Request("DELETE", f"/v2/{ctx.name}/blobs/{sha256_digest(ctx.disk)}")


def _session(method: str, body: bool = False, digest: bool = False) -> Callable[[Ctx], Request]:
    def make(ctx: Ctx) -> Request:
        url = ctx.session()
        kwargs: dict[str, Any] = {}
        if body:
            kwargs["content"] = ctx.disk
            kwargs["headers"] = {
                "Content-Range": f"0-{len(ctx.disk) - 1}",
                "Content-Type": "application/octet-stream",
            }
        if digest:
            kwargs["params"] = {"digest": sha256_digest(ctx.disk)}
        return Request(method, url, kwargs)

    return make


TAG = "/reg/{repo:str}/{image:str}/{tag:str}"
MANIFEST = "/v2/{repo:str}/{image:str}/manifests/{reference:str}"
BLOB = "/v2/{repo:str}/{image:str}/blobs/{digest:str}"
SESSION = "/v2/{repo:str}/{image:str}/blobs/uploads/{session:str}"

TABLE: dict[tuple[str, str], Case] = {
    # /reg
    ("/reg", "GET"): Case("listing", _get("/reg")),
    ("/reg/_query", "GET"): Case("listing", _get("/reg/_query?meta=k%3Dv")),
    ("/reg/_events", "GET"): Case("listing", _get("/reg/_events")),
    ("/reg/{repo:str}", "GET"): Case("repo-listing", _at("GET", "/reg/mtx")),
    ("/reg/{repo:str}/{image:str}", "GET"): Case("pull", _at("GET", "/reg/{name}")),
    (TAG, "GET"): Case("pull", _seeded("GET")),
    (TAG, "HEAD"): Case("pull", _seeded("HEAD")),
    (TAG, "POST"): Case("push", _upload_multipart, 201),
    (TAG, "PUT"): Case("push", _upload_raw, 201),
    (TAG, "DELETE"): Case("delete", _seeded("DELETE")),
    (TAG + "/meta", "GET"): Case("pull", _seeded("GET", "/meta")),
    (TAG + "/meta", "HEAD"): Case("pull", _seeded("HEAD", "/meta")),
    (TAG + "/history", "GET"): Case("pull", _seeded("GET", "/history")),
    (TAG + "/retag", "POST"): Case("push", _retag, 201),
    (TAG + "/immutable", "PUT"): Case("admin", _seeded("PUT", "/immutable")),
    (TAG + "/immutable", "DELETE"): Case("admin", _release),
    # /v2
    ("/v2", "GET"): Case("signed-in", _get("/v2/")),
    ("/v2/_catalog", "GET"): Case("listing", _get("/v2/_catalog")),
    ("/v2/{repo:str}/{image:str}/tags/list", "GET"): Case("pull", _v2("tags/list")),
    (MANIFEST, "GET"): Case("pull", _v2("manifests/v1")),
    (MANIFEST, "HEAD"): Case("pull", _head(_v2("manifests/v1"))),
    (MANIFEST, "PUT"): Case("push", _put_manifest, 201),
    (MANIFEST, "DELETE"): Case("delete", _at("DELETE", "/v2/{name}/manifests/v1"), 202),
    (BLOB, "GET"): Case("pull", _v2("blobs/{sha}")),
    (BLOB, "HEAD"): Case("pull", _head(_v2("blobs/{sha}"))),
    (BLOB, "DELETE"): Case("delete", _delete_blob, 202),
    ("/v2/{repo:str}/{image:str}/blobs/uploads", "POST"): Case(
        "push", lambda ctx: Request("POST", f"/v2/{ctx.name}/blobs/uploads/"), 202, audited=False
    ),
    (SESSION, "GET"): Case("push", _session("GET"), 204, audited=False),
    (SESSION, "PATCH"): Case("push", _session("PATCH", body=True), 202, audited=False),
    (SESSION, "PUT"): Case("push", _session("PUT", body=True, digest=True), 201, audited=False),
    (SESSION, "DELETE"): Case("push", _session("DELETE"), 204, audited=False),
    # the web pages
    ("/", "GET"): Case("signed-in", _get("/"), 302),
    ("/ui", "GET"): Case("listing", _get("/ui/")),
    ("/ui/_storage", "GET"): Case("signed-in", _get("/ui/_storage")),
    ("/ui/_query", "GET"): Case("listing", _get("/ui/_query?q=k%3Dv")),
    ("/ui/_static/{file_path:path}", "GET"): Case("signed-in", _get("/ui/_static/style.css")),
    ("/ui/_static/{file_path:path}", "HEAD"): Case(
        "signed-in", lambda _ctx: Request("HEAD", "/ui/_static/style.css")
    ),
    ("/ui/{repo:str}", "GET"): Case("repo-listing", _at("GET", "/ui/mtx")),
    ("/ui/{repo:str}/{image:str}", "GET"): Case("pull", _at("GET", "/ui/{name}")),
    ("/ui/{repo:str}/{image:str}/{tag:str}", "GET"): Case("pull", _at("GET", "/ui/{name}/v1")),
    # open: probes, metrics, the OpenAPI documents
    ("/healthz", "GET"): Case("open", _get("/healthz")),
    ("/readyz", "GET"): Case("open", _get("/readyz")),
    ("/metrics", "GET"): Case("open", _get("/metrics")),
    ("/docs", "GET"): Case("open", _get("/docs")),
    ("/docs/openapi.json", "GET"): Case("open", _get("/docs/openapi.json")),
    ("/docs/openapi-3.1.json", "GET"): Case("open", _get("/docs/openapi-3.1.json")),
    ("/docs/{path:str}", "GET"): Case("open", _get("/docs/nothing-here"), 404),
}

_GUARDED = ("/reg", "/v2", "/ui")


def _with_options(table: dict[tuple[str, str], Case]) -> dict[tuple[str, str], Case]:
    """Every path answers ``OPTIONS`` (Litestar adds the handler): behind the guards it
    needs credentials (a read, no name checked), elsewhere nothing."""
    cases = dict(table)
    for path in {path for path, _method in table}:
        url = _concrete(path)
        guarded = path == "/" or path.startswith(_GUARDED)
        cases[(path, "OPTIONS")] = Case("signed-in" if guarded else "open", _options(url), 204)
    return cases


def _options(url: str) -> Callable[[Ctx], Request]:
    return lambda _ctx: Request("OPTIONS", url)


def _concrete(path: str) -> str:
    """A URL of a route's path (its parameters filled in with names under ``mtx``)."""
    values = {
        "repo": "mtx", "image": "img", "tag": "v1", "reference": "v1", "session": "s1",
        "digest": "sha256:" + "0" * 64, "file_path": "style.css", "path": "nothing-here",
    }  # fmt: skip
    for name, value in values.items():
        path = path.replace("{" + name + ":str}", value).replace("{" + name + ":path}", value)
    return path if path != "/ui" else "/ui/"


CASES = _with_options(TABLE)


def app_routes(data_root: Path) -> set[tuple[str, str]]:
    """``(path, method)`` of every route handler of the application the server runs."""
    app = create_app(Settings(data_root=data_root), None)
    return {
        (route.path, method)
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        for method in handler.http_methods
    }


def test_every_route_has_an_entry(tmp_path: Path) -> None:
    routes = app_routes(tmp_path / "data")
    assert any(path.startswith("/v2/") for path, _method in routes)  # not the OpenAPI view
    missing = sorted(routes - set(CASES))
    stale = sorted(set(CASES) - routes)
    assert not missing, f"routes without an entry in the scope matrix: {missing}"
    assert not stale, f"entries of the scope matrix without a route: {stale}"


# -- the server and the matrix -----------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[RunningServer]:
    secrets_dir = tmp_path_factory.mktemp("secrets")
    (secrets_dir / "tokens").write_text("".join(f"{n} {t}\n" for n, t in TOKENS.items()))
    (secrets_dir / "users").write_text(f"{READER[0]}:{READER[1]}\n")
    (secrets_dir / "policy.yaml").write_text(json.dumps(POLICY))
    yield from serve_module(
        tmp_path_factory,
        backend,
        *("--write-token-file", str(secrets_dir / "tokens")),
        *("--read-auth", "basic"),
        *("--read-credentials-file", str(secrets_dir / "users")),
        *("--policy-file", str(secrets_dir / "policy.yaml")),
    )


_REFUSED = {"anonymous": 401, "read-only": 403, "out-of-scope": 403}
_ACTIONS = {"push", "delete", "admin"}


def expected(case: Case, caller: str) -> int:
    """The status ``caller`` gets from the route of ``case``."""
    if case.needs == "open" or caller == "in-scope":
        return case.ok
    if caller == "anonymous":
        return 401
    if case.needs in ("listing", "signed-in"):
        return case.ok  # any valid credential; listings are filtered, never refused
    if case.needs == "repo-listing":
        return 404 if caller == "out-of-scope" else case.ok  # no hint that it exists
    if case.needs == "pull" and caller == "read-only":
        return case.ok
    return _REFUSED[caller]


@pytest.mark.parametrize(("path", "method"), sorted(CASES), ids=lambda v: str(v))
def test_the_scope_matrix(server: RunningServer, path: str, method: str) -> None:
    case = CASES[(path, method)]
    with server.client(headers=_headers("root")) as root, server.client() as http:
        ctx = Ctx(root)
        request = case.make(ctx)
        answers: dict[str, int] = {}
        for caller in CALLERS:
            kwargs = dict(request.kwargs)
            headers = {**kwargs.pop("headers", {}), **_headers(caller)}
            response = http.request(request.method, request.url, headers=headers, **kwargs)
            answers[caller] = response.status_code
        wanted = {caller: expected(case, caller) for caller in CALLERS}
        assert answers == wanted, f"{method} {request.url} ({case.needs})"
    if case.needs in _ACTIONS and case.audited:
        line = f"accepted {case.needs} of {ctx.name} by token in-scope"
        assert server.log().count(line) == 1, line
    # A refused write leaves its warning (a refused read does not: it writes nothing).
    refused = f"of {ctx.name} to token out-of-scope (no scope)"
    wrote = case.needs in _ACTIONS and method not in ("GET", "HEAD", "OPTIONS")
    assert (refused in server.log()) == wrote
