"""The web pages under ``/ui/``, against real ``cloudimg serve`` processes on both backends.

Pages are parsed with the standard library's HTML parser (what a browser builds from
them, minus the rendering): the tests read the page's elements, not its source text,
so an escaping mistake shows up as an element or attribute that should not be there.
The snippets of the "use it" panel are taken from the page and used as they are: the
DataVolume YAML is parsed and its URL downloaded, and the ``qemu-img convert``
command is run.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import math
import os
import secrets
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from litestar.exceptions import PermissionDeniedException

from cloudimg.errors import ImageBlockedError, UnavailableError
from tests import test_qemu_img as qemu
from tests.conftest import RunningServer, upload
from tests.images import needs_qemu_img, qcow2, qcow2_with_backing_file, qemu_virtual_size
from tests.maintenance_support import (
    cli,
    cli_json,
    forget_inspection,
    legacy_put,
    open_test_catalog,
    sql,
)
from tests.oci_support import (
    container_manifest,
    manifest_of,
    push_blob,
    put_manifest,
    tar_layer,
)
from tests.support import assert_error, blake3_hex, random_image, sha256_hex
from tests.test_auth import READ_PASSWORD, READ_USER, WRITE_TOKEN, basic, bearer
from tests.test_observability import scrape

GIB = 1024**3

# -- reading pages ---------------------------------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    text: str = ""
    children: list[Element] = field(default_factory=list)

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Descendants with ``tag`` whose attributes include ``attrs`` (``cls`` is ``class``)."""
        wanted = {("class" if k == "cls" else k): v for k, v in attrs.items()}
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                v in (child.attrs.get(k) or "").split() if k == "class" else child.attrs.get(k) == v
                for k, v in wanted.items()
            ):
                found.append(child)
            found += child.find_all(tag, **attrs)
        return found

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, found)
        return found[0]

    def walk(self) -> Iterator[Element]:
        for child in self.children:
            yield child
            yield from child.walk()


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        self.open[-1].children.append(element)
        if tag not in _VOID:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open[-1].children.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert tag not in _VOID, tag
        assert self.open[-1].tag == tag, f"</{tag}> closes <{self.open[-1].tag}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        for element in self.open:
            element.text += data


def page(http: httpx.Client, path: str, **params: str) -> Element:
    """GET ``path`` (an HTML page, 200) and its element tree."""
    response = http.get(path, params=params)
    assert response.status_code == 200, response.text
    return parse_page(response)


def parse_page(response: httpx.Response) -> Element:
    """The element tree of an HTML page, with the headers every page carries."""
    assert response.headers["content-type"] == "text/html; charset=utf-8", response.text
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert response.headers["cache-control"] == "no-store"
    builder = _TreeBuilder()
    builder.feed(response.text)
    builder.close()
    assert builder.open == [builder.root], "an element is left open"
    assert_only_own_scripts(builder.root)
    return builder.root


def error_page(response: httpx.Response, status: int, code: str | None = None) -> Element:
    """``response`` is a page's HTML error page with ``status`` (and the API's ``code``)."""
    assert response.status_code == status, response.text
    document = parse_page(response)
    assert document.one("title").text.startswith(f"{status} ")
    shown = facts(document)
    assert shown["Status"].startswith(str(status))
    if code is not None:
        assert shown["Code"] == code
    return document


def assert_only_own_scripts(document: Element) -> None:
    """One script, the registry's own file; no inline handlers, no other active content."""
    scripts = document.find_all("script")
    assert [s.attrs.get("src") for s in scripts] == [scripts[0].attrs.get("src")]
    assert str(scripts[0].attrs["src"]).endswith("/_static/app.js")
    assert scripts[0].text == ""
    for element in document.walk():
        assert element.tag not in {"iframe", "object", "embed", "img", "base", "form"} or (
            element.tag == "form" and element.attrs.get("method") == "get"
        ), element
        for name, value in element.attrs.items():
            assert not name.startswith("on"), (element.tag, name)
            assert not (value or "").strip().lower().startswith("javascript:"), element


def rows(document: Element) -> list[str]:
    """The names the listing shows (its filterable rows)."""
    return [
        str(e.attrs["data-filter-text"]).split()[0]
        for e in document.one(id="rows").walk()
        if "data-filter-text" in e.attrs
    ]


def next_page(document: Element) -> dict[str, str] | None:
    """The query of the "Next page" link, or None on the last page."""
    links = document.find_all("a", rel="next")
    if not links:
        return None
    query = parse_qs(urlsplit(str(links[0].attrs["href"])).query)
    return {key: values[0] for key, values in query.items()}


def all_pages(http: httpx.Client, path: str, **params: str) -> list[list[str]]:
    """The rows of every page of a listing, following the "Next page" links."""
    pages = []
    query: dict[str, str] | None = params
    while query is not None:
        document = page(http, path, **query)
        pages.append(rows(document) if document.find_all(id="rows") else [])
        query = next_page(document)
    return pages


def snippet(document: Element, name: str) -> str:
    return document.one("pre", id=f"use-{name}").text


def facts(document: Element) -> dict[str, str]:
    """A tag page's details and metadata: each ``<dt>`` with its ``<dd>``."""
    return dict(
        zip(
            [dt.text for dt in document.find_all("dt")],
            [dd.text for dd in document.find_all("dd")],
            strict=True,
        )
    )


def table_cells(document: Element) -> dict[str, list[Element]]:
    """A tag table's cells by tag name."""
    return {
        row.children[0].find_all("a")[0].text: row.children
        for row in document.one("tbody").children
    }


def forget(server: RunningServer, data: bytes) -> None:
    """Make the blob of ``data`` what a version without inspection stored."""
    forget_inspection(server.data_root, blake3_hex(data))


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


# -- pages -----------------------------------------------------------------------------


def test_www_prefix_redirects_to_the_pages(http: httpx.Client) -> None:
    response = http.get("/")
    assert response.status_code == 302
    assert response.headers["location"] == "/ui/"
    document = page(http, "/ui/")
    assert document.one("h1").text == "Repositories"


def test_every_page_shows_what_the_catalog_holds(
    http: httpx.Client, server: RunningServer, repo: str
) -> None:
    data = b"disk bytes " + secrets.token_bytes(64)  # no other format claims it: raw
    meta = {"os": "ubuntu", "arch": "amd64"}
    assert upload(http, f"/reg/{repo}/jammy/22.04", data, meta).status_code == 201
    assert upload(http, f"/reg/{repo}/noble/24.04", b"other").status_code == 201
    old = b"stored before inspection " + secrets.token_bytes(16)
    assert upload(http, f"/reg/{repo}/jammy/old", old).status_code == 201
    forget(server, old)
    inspected = http.get(f"/reg/{repo}/jammy/22.04/meta").json()
    assert inspected["format"] == "raw"
    virtual_size = inspected["virtual_size"]  # the file's size in whole sectors, as qemu's
    assert virtual_size >= len(data)

    assert repo in rows(page(http, "/ui/", q=repo))
    images = page(http, f"/ui/{repo}")
    assert rows(images) == ["jammy", "noble"]
    assert images.one("a", href=f"/ui/{repo}/jammy").text == "jammy"

    tags = table_cells(page(http, f"/ui/{repo}/jammy"))
    assert list(tags) == ["22.04", "old"]
    cells = [cell.text.strip() for cell in tags["22.04"]]
    assert [d.attrs["value"] for d in tags["22.04"][1].find_all("data")] == [str(len(data))]
    assert cells[2] == "raw"
    assert [d.attrs["value"] for d in tags["22.04"][3].find_all("data")] == [str(virtual_size)]
    assert sha256_hex(data).startswith(cells[5].rstrip("…"))
    assert "os: ubuntu" in cells[6]
    uninspected = [cell.text.strip() for cell in tags["old"]]
    assert uninspected[2:4] == ["not inspected", "not inspected"]

    tag = page(http, f"/ui/{repo}/jammy/22.04")
    shown = facts(tag)
    assert shown["blake3"] == f"blake3:{blake3_hex(data)}"
    assert shown["sha256"] == f"sha256:{sha256_hex(data)}"
    assert shown["Format"] == "raw"
    assert f"({virtual_size} bytes)" in shown["Virtual size"]
    assert shown["os"] == "ubuntu"
    assert shown["arch"] == "amd64"
    meta_link = tag.one("a", href=f"/reg/{repo}/jammy/22.04/meta")
    assert http.get(str(meta_link.attrs["href"])).json()["sha256"] == f"sha256:{sha256_hex(data)}"
    shown = facts(page(http, f"/ui/{repo}/jammy/old"))
    assert (shown["Format"], shown["Virtual size"]) == ("not inspected", "not inspected")


def test_stylesheet_and_script_are_served_by_the_registry(http: httpx.Client) -> None:
    document = page(http, "/ui/")
    for path, kind in [
        (document.one("link", rel="stylesheet").attrs["href"], "text/css"),
        (document.one("script").attrs["src"], "text/javascript"),
    ]:
        assert str(path).startswith("/ui/_static/")
        response = http.get(str(path))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(kind)
        assert "http://" not in response.text
        assert "https://" not in response.text  # nothing from a CDN or a font service


def test_names_that_break_the_rules_or_do_not_exist_get_html_error_pages(
    http: httpx.Client, repo: str
) -> None:
    assert upload(http, f"/reg/{repo}/img/v1", b"bytes").status_code == 201
    error_page(http.get("/ui/Not_A_Repo"), 400, "INVALID_ARGUMENT")
    missing = error_page(http.get(f"/ui/{repo}-gone"), 404, "NOT_FOUND")
    assert missing.one("h1").text == "Not Found"
    assert missing.one("p", id="error-message").text == "repository not found"
    assert facts(missing)["repo"] == f"{repo}-gone"
    error_page(http.get(f"/ui/{repo}/nope"), 404, "NOT_FOUND")
    unknown_tag = error_page(http.get(f"/ui/{repo}/img/v9"), 404, "NOT_FOUND")
    assert unknown_tag.one("p", id="error-message").text == "tag not found"
    assert unknown_tag.one("a", cls="brand").attrs["href"] == "/ui/"  # the site's header
    error_page(http.get("/ui/", params={"limit": "0"}), 400, "INVALID_ARGUMENT")
    error_page(http.get("/ui/", params={"limit": "501"}), 400, "INVALID_ARGUMENT")
    error_page(http.get("/ui/", params={"q": "x" * 201}), 400, "INVALID_ARGUMENT")
    error_page(http.get("/ui/", params={"sort": "colour"}), 400, "INVALID_ARGUMENT")
    # Paths no route takes, and methods the pages do not answer.
    error_page(http.get(f"/ui/{repo}/img/v1/more"), 404, "NOT_FOUND")
    error_page(http.get("/ui/_static/nothing.css"), 404, "NOT_FOUND")
    refused = http.post("/ui/", content=b"")
    error_page(refused, 405)
    assert "GET" in refused.headers["allow"]


def test_a_hostile_path_is_shown_as_text_on_the_error_page(http: httpx.Client) -> None:
    document = error_page(http.get('/ui/"><script>alert(1)</script>/x/y/z'), 404)
    assert '"><script>alert(1)</script>' in facts(document)["Page"]  # one script: checked


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (
            ImageBlockedError("the image is blocked", {"rule": "qcow2-backing-file"}),
            403,
            "IMAGE_BLOCKED",
        ),
        (
            PermissionDeniedException(detail="these credentials may only read"),
            403,
            "PERMISSION_DENIED",
        ),
        (UnavailableError("the catalog is busy"), 503, "UNAVAILABLE"),
        (RuntimeError("/secret/server/path broke"), 500, "INTERNAL"),
    ],
    ids=["blocked", "denied", "unavailable", "unexpected"],
)
def test_every_status_a_page_may_answer_is_an_html_page(
    error: Exception, status: int, code: str
) -> None:
    """The statuses no page of a test server reaches today (a page refusing blocked bytes,
    a 403 from a guard, a busy catalog, a bug), through the app's own error mapping
    wrapped as ``create_app`` wraps it, in process: HTML on the pages, JSON elsewhere."""
    from litestar import Litestar, get
    from litestar.testing import TestClient

    from cloudimg.api.errors import exception_handlers
    from cloudimg.api.web import template_config, with_page_errors
    from cloudimg.config import Settings

    @get(["/ui/lab", "/reg/lab"], sync_to_thread=False)
    def fails() -> None:
        raise error

    app = Litestar(
        [fails],
        template_config=template_config(),
        exception_handlers=with_page_errors(exception_handlers, Settings()),
        logging_config=None,
    )
    with TestClient(app) as client:
        document = error_page(client.get("/ui/lab"), status, code)
        assert "/secret" not in document.one("main").text  # as the JSON hides it
        assert_error(client.get("/reg/lab"), status, code)


def test_the_api_keeps_its_json_errors(http: httpx.Client, repo: str) -> None:
    assert_error(http.get(f"/reg/{repo}"), 404, "NOT_FOUND")
    assert_error(http.get(f"/reg/{repo}/img/v1/meta"), 404, "NOT_FOUND")
    assert_error(http.get("/reg/Not_A_Repo"), 400, "INVALID_ARGUMENT")
    assert_error(http.get("/nothing/here"), 404, "NOT_FOUND")
    assert_error(http.get("/uix"), 404, "NOT_FOUND")  # not under ui/
    oci = http.get(f"/v2/{repo}/img/manifests/v1")
    assert oci.status_code == 404
    assert oci.json()["errors"][0]["code"] in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN")


HOSTILE = {
    "<script>alert(1)</script>": '"><img src=x onerror=alert(2)>',
    "os": "</pre></code><script>alert(3)</script>",
    "template": "{{ 7 * 7 }}{% raw %}",
    "link": "javascript:alert(4)",
    "quote": 'it\'s "quoted" & <b>bold</b>',
}


def test_hostile_metadata_is_shown_as_text(http: httpx.Client, repo: str) -> None:
    assert upload(http, f"/reg/{repo}/evil/v1", b"x", HOSTILE).status_code == 201
    tag = page(http, f"/ui/{repo}/evil/v1")  # one script only, no handlers: checked there
    shown = facts(tag)
    for key, value in HOSTILE.items():
        assert shown[key] == value
    table = page(http, f"/ui/{repo}/evil")
    items = [li.text for li in table.one("ul", cls="meta").find_all("li")]
    assert items == [f"{key}: {value}" for key, value in sorted(HOSTILE.items())]
    assert not table.find_all("b")


def test_a_hostile_filter_is_echoed_as_text(http: httpx.Client) -> None:
    wanted = '"><script>alert(1)</script>'
    document = page(http, "/ui/", q=wanted)
    assert document.one("input", id="q").attrs["value"] == wanted
    assert wanted in document.one("main").text


def test_filter_matches_names_and_metadata(http: httpx.Client, repo: str) -> None:
    for tag, meta in [("v1", {"os": "debian"}), ("v2", {"os": "Ubuntu"}), ("ubuntu-x", {})]:
        assert upload(http, f"/reg/{repo}/img/{tag}", tag.encode(), meta).status_code == 201
    assert rows(page(http, f"/ui/{repo}/img", q="ubuntu")) == ["ubuntu-x", "v2"]
    assert rows(page(http, f"/ui/{repo}/img", q="DEBIAN")) == ["v1"]
    assert rows(page(http, f"/ui/{repo}/img")) == ["ubuntu-x", "v1", "v2"]
    none = page(http, f"/ui/{repo}/img", q="fedora")
    assert not none.find_all(id="rows")
    assert "No tag matches" in none.one("main").text


def test_listings_are_paginated(http: httpx.Client, repo: str) -> None:
    tags = [f"t{n:02d}" for n in range(7)]
    for tag in reversed(tags):
        assert upload(http, f"/reg/{repo}/img/{tag}", tag.encode()).status_code == 201
    assert all_pages(http, f"/ui/{repo}/img", limit="3") == [tags[0:3], tags[3:6], tags[6:7]]
    assert all_pages(http, f"/ui/{repo}/img", limit="7") == [tags]
    # The filter stays on from page to page.
    assert all_pages(http, f"/ui/{repo}/img", limit="1", q="t0") == [[t] for t in tags]
    second = page(http, f"/ui/{repo}/img", limit="3", after="t02")
    assert [a.text for a in second.one("nav", cls="pager").find_all("a")] == [
        "First page",
        "Next page",
    ]
    # Repositories and images page the same way.
    repos = [f"{repo}-{n}" for n in range(5)]
    for name in repos:
        assert upload(http, f"/reg/{name}/img{name[-1]}x/v1", b"r").status_code == 201
    assert all_pages(http, "/ui/", q=f"{repo}-", limit="2") == [repos[0:2], repos[2:4], repos[4:]]


def summary_rows(document: Element) -> dict[str, dict[str, str]]:
    """A repository or image table: each row's name, and its cells' machine values
    (``<data value>``, ``<time datetime>``) by column header."""
    table = document.one("table", cls="summary")
    headers = [
        th.text.replace("▲", "").replace("▼", "").strip()
        for th in table.one("thead").find_all("th")
    ]
    found = {}
    for row in table.one("tbody").children:
        values = {}
        for header, cell in zip(headers, row.children, strict=True):
            machine = cell.find_all("data") + cell.find_all("time")
            values[header] = (
                str(machine[0].attrs.get("value") or machine[0].attrs.get("datetime"))
                if machine
                else cell.text.strip()
            )
        found[row.children[0].text.strip()] = values
    return found


def test_the_lists_show_counts_sizes_and_last_updates(http: httpx.Client, repo: str) -> None:
    shared, other = random_image(3000), random_image(1000)
    assert upload(http, f"/reg/{repo}/alpha/v1", shared).status_code == 201
    assert upload(http, f"/reg/{repo}/alpha/v2", other).status_code == 201
    assert upload(http, f"/reg/{repo}-2/solo/v1", random_image(500)).status_code == 201
    assert upload(http, f"/reg/{repo}/beta/v1", shared).status_code == 201
    last = http.get(f"/reg/{repo}/beta/v1/meta").json()["updated"]

    repositories = summary_rows(page(http, "/ui/", q=repo))
    assert list(repositories) == [repo, f"{repo}-2"]
    shown = repositories[repo]
    assert (shown["Images"], shown["Tags"], shown["Size"]) == ("2", "3", str(2 * 3000 + 1000))
    assert datetime.fromisoformat(shown["Updated (UTC)"]) == datetime.fromisoformat(last)

    images = summary_rows(page(http, f"/ui/{repo}"))
    api = {
        row["image"]: row
        for row in http.get(f"/reg/{repo}", params={"details": "true"}).json()["data"]
    }
    assert list(images) == list(api) == ["alpha", "beta"]
    for name, row in images.items():  # the figures /reg's detailed listing has
        assert int(row["Tags"]) == api[name]["tags"]
        assert int(row["Size"]) == api[name]["size"]
        assert datetime.fromisoformat(row["Updated (UTC)"]) == datetime.fromisoformat(
            api[name]["updated"]
        )


def sort_link(document: Element, key: str) -> dict[str, str]:
    """The query of the column header link that sorts the listing by ``key``."""
    link = document.one("a", **{"data-sort": key})
    query = parse_qs(urlsplit(str(link.attrs["href"])).query)
    return {name: values[0] for name, values in query.items()}


def test_the_lists_sort_by_name_size_and_last_update_without_javascript(
    http: httpx.Client, repo: str
) -> None:
    sizes = {"delta": 700, "alpha": 300, "charlie": 900, "bravo": 300, "echo": 100}
    for name, size in sizes.items():  # uploaded in this order: echo is the newest
        assert upload(http, f"/reg/{repo}/{name}/v1", random_image(size)).status_code == 201
    by_name = page(http, f"/ui/{repo}")
    assert rows(by_name) == sorted(sizes)
    assert by_name.one("th", **{"aria-sort": "ascending"}).one("a").attrs["data-sort"] == "name"

    by_size_query = sort_link(by_name, "size")
    by_size = page(http, f"/ui/{repo}", **by_size_query)
    largest_first = ["charlie", "delta", "alpha", "bravo", "echo"]  # ties by name
    assert rows(by_size) == largest_first
    assert by_size.one("th", **{"aria-sort": "descending"}).one("a").attrs["data-sort"] == "size"
    assert "largest first" in by_size.one("caption").text
    newest_first = list(reversed(sizes))
    assert rows(page(http, f"/ui/{repo}", **sort_link(by_size, "updated"))) == newest_first
    assert rows(page(http, f"/ui/{repo}", **sort_link(by_size, "name"))) == sorted(sizes)

    # Each order pages by its own keyset, and the filter form keeps the order.
    assert all_pages(http, f"/ui/{repo}", sort="size", limit="2") == [
        largest_first[0:2],
        largest_first[2:4],
        largest_first[4:],
    ]
    assert all_pages(http, f"/ui/{repo}", sort="updated", limit="3") == [
        newest_first[0:3],
        newest_first[3:],
    ]
    form = by_size.one("form", cls="filter")
    assert form.one("input", type="hidden", name="sort").attrs["value"] == "size"
    assert rows(page(http, f"/ui/{repo}", q="h", sort="size")) == ["charlie", "alpha", "echo"]
    # Repositories sort the same way.
    for name, size in [("big", 5000), ("small", 10)]:
        assert upload(http, f"/reg/{repo}-{name}/img/v1", random_image(size)).status_code == 201
    assert rows(page(http, "/ui/", q=repo, sort="size")) == [f"{repo}-big", repo, f"{repo}-small"]
    assert rows(page(http, "/ui/", q=repo, sort="updated"))[0] == f"{repo}-small"
    # A page after a row names that row's figure too; without it, or a bad one, is a 400.
    for sort, value in [
        ("size", None),
        ("size", "lots"),
        ("size", "9" * 30),  # past a BIGINT
        ("updated", None),
        ("updated", "yesterday"),
        ("updated", "2026-01-01T00:00:00"),  # no offset
    ]:
        params = {"sort": sort, "after": "x"}
        if value is not None:
            params["after_value"] = value
        error_page(http.get(f"/ui/{repo}", params=params), 400, "INVALID_ARGUMENT")


def test_a_quarantined_tag_is_marked_in_the_table_and_refused_alone(
    http: httpx.Client, server: RunningServer, repo: str
) -> None:
    assert upload(http, f"/reg/{repo}/img/bad", b"bytes fsck found bad").status_code == 201
    assert upload(http, f"/reg/{repo}/img/good", b"fine bytes").status_code == 201
    # What fsck leaves when a blob fails its check.
    sql(
        server.data_root,
        "UPDATE blobs SET quarantined_at = created_at WHERE digest = ?",
        blake3_hex(b"bytes fsck found bad"),
    )
    marks = {
        tag: cells[0].text for tag, cells in table_cells(page(http, f"/ui/{repo}/img")).items()
    }
    assert "quarantined" in marks["bad"]
    assert "quarantined" not in marks["good"]
    document = error_page(http.get(f"/ui/{repo}/img/bad"), 500, "DATA_LOSS")  # as /reg says
    assert "quarantined" in document.one("p", id="error-message").text
    assert_error(http.get(f"/reg/{repo}/img/bad/meta"), 500, "DATA_LOSS")
    page(http, f"/ui/{repo}/img/good")


@needs_qemu_img
@pytest.mark.slow  # a server of its own, fsck and unblock in other processes
def test_a_blocked_image_says_so_until_an_operator_unblocks_it(
    server_factory: Callable[..., RunningServer], backend: str, tmp_path: Path
) -> None:
    running = server_factory()
    root = str(running.data_root)
    (tmp_path / "made").mkdir()
    unsafe = qcow2_with_backing_file(tmp_path / "made").read_bytes()

    async def store_unsafe() -> str:  # as a version without inspection let it in
        async with open_test_catalog(running.data_root, backend) as catalog:
            return await legacy_put(catalog, "lab/img/bad", unsafe)

    digest = asyncio.run(store_unsafe())
    with running.client() as http:
        assert upload(http, "/reg/lab/img/good", secrets.token_bytes(100)).status_code == 201
        assert not page(http, "/ui/lab/img/bad").find_all("p", cls="alert")
        cli("fsck", "--data-root", root, "--block-unsafe", check=1)

        marks = {
            tag: cells[0].text for tag, cells in table_cells(page(http, "/ui/lab/img")).items()
        }
        assert "blocked" in marks["bad"]
        assert "blocked" not in marks["good"]
        assert not page(http, "/ui/lab/img/good").find_all("p", cls="alert")

        document = page(http, "/ui/lab/img/bad")
        block = http.get("/reg/lab/img/bad/meta").json()["blocked"]
        assert block["rule"] == "qcow2-backing-file"
        said = document.one("p", id="blocked")
        assert "qcow2-backing-file" in said.text
        since = datetime.fromisoformat(str(said.one("time").attrs["datetime"]))
        assert since == datetime.fromisoformat(block["since"])
        panel = document.one("p", id="use-blocked")
        assert "refused" in panel.text
        assert_error(http.get(snippet(document, "url")), 403, "IMAGE_BLOCKED")  # as it says

        # The command the panel names lifts the block, and the page says nothing more.
        command = shlex.split(panel.find_all("code")[-1].text)
        assert command == ["cloudimg", "unblock", f"blake3:{digest}"]
        cli(*command[1:], "--data-root", root, check=0)
        document = page(http, "/ui/lab/img/bad")
        assert not document.find_all("p", cls="alert")
        assert http.get(snippet(document, "url")).content == unsafe
        assert "blocked" not in table_cells(page(http, "/ui/lab/img"))["bad"][0].text


def test_html_routes_stay_out_of_the_openapi_document(http: httpx.Client) -> None:
    paths = http.get("/docs/openapi.json").json()["paths"]
    assert paths, "the document lists the API"
    assert not [path for path in paths if path == "/" or path.startswith("/ui")]


# -- the "use it" panel ----------------------------------------------------------------


@needs_qemu_img
def test_datavolume_names_the_pinned_url_and_checksum(
    http: httpx.Client, server: RunningServer, repo: str, tmp_path: Path
) -> None:
    disk = qcow2(tmp_path, size="2500M")  # a few hundred KiB on disk, 2.44 GiB virtual
    data = disk.read_bytes()
    virtual_size = qemu_virtual_size(disk, "qcow2")
    assert upload(http, f"/reg/{repo}/cirros/0.6.2", data).status_code == 201
    document = page(http, f"/ui/{repo}/cirros/0.6.2")
    pinned = f"{server.base_url}/reg/{repo}/cirros/sha256:{sha256_hex(data)}"
    assert snippet(document, "url") == pinned

    volume = yaml.safe_load(snippet(document, "datavolume"))
    assert volume["apiVersion"] == "cdi.kubevirt.io/v1beta1"
    assert volume["kind"] == "DataVolume"
    assert volume["metadata"]["name"] == "cirros-0-6-2"
    source = volume["spec"]["source"]["http"]
    assert source == {"url": pinned, "checksum": f"sha256:{sha256_hex(data)}"}
    # The virtual size the upload's inspection found, rounded up to whole GiB.
    requested = volume["spec"]["storage"]["resources"]["requests"]["storage"]
    assert requested == f"{math.ceil(virtual_size / GIB)}Gi" == "3Gi"
    assert "not inspected" not in snippet(document, "datavolume")
    # What CDI would do with it: download the URL and check the checksum.
    downloaded = httpx.get(source["url"], timeout=30)
    assert downloaded.status_code == 200
    assert "sha256:" + hashlib.sha256(downloaded.content).hexdigest() == source["checksum"]


def test_an_uninspected_datavolume_asks_for_the_virtual_size(
    http: httpx.Client, server: RunningServer, repo: str
) -> None:
    data = secrets.token_bytes(3000)
    assert upload(http, f"/reg/{repo}/cirros/old", data).status_code == 201
    forget(server, data)
    text = snippet(page(http, f"/ui/{repo}/cirros/old"), "datavolume")
    volume = yaml.safe_load(text)
    assert volume["spec"]["storage"]["resources"]["requests"]["storage"] == "1Gi"  # file size
    assert "not inspected: make this at least the image's virtual size" in text


def test_an_uninspected_image_asks_for_its_format(
    http: httpx.Client, server: RunningServer, repo: str
) -> None:
    old, new = secrets.token_bytes(100), secrets.token_bytes(100)
    assert upload(http, f"/reg/{repo}/img/old", old).status_code == 201
    assert upload(http, f"/reg/{repo}/img/new", new).status_code == 201
    forget(server, old)
    document = page(http, f"/ui/{repo}/img/old")
    assert "has not been inspected" in document.one("p", id="format-note").text
    convert = shlex.split(snippet(document, "qemu-convert"))
    assert convert[:6] == ["qemu-img", "convert", "-f", "FORMAT", "-m", "1"]
    assert shlex.split(snippet(document, "qemu-info"))[:2] == ["qemu-img", "info"]
    # An inspected upload names its format and needs no qemu-img info.
    document = page(http, f"/ui/{repo}/img/new")
    assert not document.find_all("p", id="format-note")
    assert not document.find_all("pre", id="use-qemu-info")
    convert = shlex.split(snippet(document, "qemu-convert"))
    assert convert[:6] == ["qemu-img", "convert", "-f", "raw", "-m", "1"]


def needs_qemu_http(test: Callable[..., None]) -> Callable[..., None]:
    """Skip, saying why, where qemu-img or its http driver is missing."""
    for mark in qemu.pytestmark:
        test = mark(test)
    return test


@needs_qemu_http
def test_the_qemu_img_command_converts_the_image(
    http: httpx.Client, server: RunningServer, repo: str, tmp_path: Path
) -> None:
    raw = qemu.known_raw_disk()
    (tmp_path / "disk.raw").write_bytes(raw)
    made = qemu.qemu_img(
        "convert", "-f", "raw", "-O", "qcow2", str(tmp_path / "disk.raw"), str(tmp_path / "d.qcow2")
    )
    qemu.check_ok(made, server)
    disk = (tmp_path / "d.qcow2").read_bytes()
    assert upload(http, f"/reg/{repo}/vm-disk/v1", disk).status_code == 201  # inspected
    document = page(http, f"/ui/{repo}/vm-disk/v1")
    assert not document.find_all("p", id="format-note")
    command = shlex.split(snippet(document, "qemu-convert"))
    assert command[:7] == ["qemu-img", "convert", "-f", "qcow2", "-m", "1", "-O"]
    (tmp_path / "out").mkdir()
    done = subprocess.run(
        command, cwd=tmp_path / "out", capture_output=True, text=True, timeout=120, check=False
    )
    qemu.check_ok(done, server)
    assert (tmp_path / "out" / command[-1]).read_bytes() == raw
    volume = yaml.safe_load(snippet(document, "datavolume"))
    requested = volume["spec"]["storage"]["resources"]["requests"]["storage"]
    assert requested == f"{math.ceil(len(raw) / GIB)}Gi"
    table = page(http, f"/ui/{repo}/vm-disk").one("tbody").one("tr")
    assert [cell.text.strip() for cell in table.children][2] == "qcow2"


# -- history, immutability, containerDisk, pull --------------------------------------


def history_rows(document: Element) -> list[list[Element]]:
    """The tag page's history table: each entry's cells, newest first."""
    return [
        row.children
        for row in document.one("tbody", id="history").children
        if "data-entry" in row.attrs
    ]


def rollback_commands(document: Element) -> dict[str, str]:
    """The command beside each history entry that rolls the tag back to it, by entry id."""
    return {
        str(row.attrs["data-rollback-of"]): row.one("pre").text
        for row in document.one("tbody", id="history").children
        if "data-rollback-of" in row.attrs
    }


def test_the_history_shows_every_change_and_links_retained_bytes(
    http: httpx.Client, repo: str
) -> None:
    path = f"{repo}/disk/v1"
    first, second, third = (random_image(n) for n in (900, 800, 700))
    assert upload(http, f"/reg/{path}", first).status_code == 201
    assert upload(http, f"/reg/{path}", second).status_code == 201  # moved
    back = http.post(f"/reg/{path}/retag", json={"digest": f"blake3:{blake3_hex(first)}"})
    assert back.status_code == 201  # retagged (a rollback)
    assert http.delete(f"/reg/{path}").status_code == 200
    assert upload(http, f"/reg/{path}", third).status_code == 201  # created again

    entries = history_rows(page(http, f"/ui/{path}"))
    api = http.get(f"/reg/{path}/history").json()["data"]  # the same catalog call, as JSON
    shown = [
        (cells[1].text.strip(), cells[2].one("code").attrs["title"], cells[3].one("data"))
        for cells in entries
    ]
    assert [(action, digest) for action, digest, _ in shown] == [
        (entry["action"], entry["digest"]) for entry in api
    ]
    assert [action for action, _, _ in shown] == [
        "created",
        "deleted",
        "retagged",
        "moved",
        "created",
    ]
    assert [int(str(size.attrs["value"])) for _, _, size in shown] == [
        entry["size"] for entry in api
    ]
    for cells, entry in zip(entries, api, strict=True):
        links = cells[5].find_all("a")
        assert cells[5].text.startswith("yes") == entry["retained"]
        assert bool(links) == entry["retained"]
        for link in links:  # a retained entry's pinned URL serves exactly its bytes
            response = http.get(str(link.attrs["href"]))
            assert response.status_code == 200
            assert f"blake3:{blake3_hex(response.content)}" == entry["digest"]
    assert any(entry["retained"] for entry in api)


def test_beside_each_retained_entry_is_the_command_that_rolls_the_tag_back_to_it(
    http: httpx.Client, repo: str, tmp_path: Path
) -> None:
    path = f"{repo}/disk/v1"
    first, second, third = (random_image(n) for n in (900, 800, 700))
    for data in (first, second, third):
        assert upload(http, f"/reg/{path}", data).status_code == 201
    document = page(http, f"/ui/{path}")
    commands = rollback_commands(document)
    ids = [
        str(row.attrs["data-entry"])
        for row in document.one("tbody", id="history").children
        if "data-entry" in row.attrs
    ]
    api = http.get(f"/reg/{path}/history").json()["data"]  # newest first, as the table
    # One beside each retained entry (the bytes the tag can go back to), none elsewhere.
    assert sorted(commands) == sorted(i for i, e in zip(ids, api, strict=True) if e["retained"])
    assert [entry["retained"] for entry in api] == [False, True, True]
    assert api[2]["digest"] == f"blake3:{blake3_hex(first)}"
    oldest = ids[2]
    command = shlex.split(commands[oldest])
    assert command == [
        "cloudimg",
        "tag",
        "--server",
        f"{str(http.base_url).rstrip('/')}/reg",
        f"{repo}/disk@blake3:{blake3_hex(first)}",
        f"{repo}/disk:v1",
    ]
    copy = document.one("button", **{"data-copy": f"rollback-{oldest}"})
    assert copy.text.startswith("Copy")
    # Run as shown (this server takes writes without a token): the tag is back.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDIMG_")}
    done = subprocess.run(
        [sys.executable, "-m", "cloudimg", *command[1:]],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert http.get(f"/reg/{path}").content == first
    assert history_rows(page(http, f"/ui/{path}"))[0][1].text.strip() == "retagged"


def test_the_download_link_is_the_pinned_url(http: httpx.Client, repo: str) -> None:
    data = random_image(5000)
    assert upload(http, f"/reg/{repo}/disk/v1", data).status_code == 201
    document = page(http, f"/ui/{repo}/disk/v1")
    link = document.one("a", id="download")
    assert link.attrs["download"] == "disk-v1.raw"
    href = str(link.attrs["href"])
    assert href == f"/reg/{repo}/disk/sha256:{sha256_hex(data)}"
    assert snippet(document, "url") == f"{str(http.base_url).rstrip('/')}{href}"
    # It keeps naming these bytes after the tag moves.
    assert upload(http, f"/reg/{repo}/disk/v1", random_image(100)).status_code == 201
    response = http.get(href)
    assert response.status_code == 200
    assert sha256_hex(response.content) == sha256_hex(data)


def test_immutability_is_shown_on_the_tag_page_and_in_the_tag_table(
    http: httpx.Client, repo: str
) -> None:
    for tag in ("free", "locked"):
        assert upload(http, f"/reg/{repo}/disk/{tag}", random_image(100)).status_code == 201
    assert facts(page(http, f"/ui/{repo}/disk/locked"))["Immutable"] == "no"
    assert http.put(f"/reg/{repo}/disk/locked/immutable").status_code == 200

    assert facts(page(http, f"/ui/{repo}/disk/locked"))["Immutable"].startswith("yes (released")
    assert facts(page(http, f"/ui/{repo}/disk/free"))["Immutable"] == "no"
    cells = table_cells(page(http, f"/ui/{repo}/disk"))
    assert [s.text for s in cells["locked"][0].find_all("span", cls="tag-immutable")] == [
        "immutable"
    ]
    assert cells["free"][0].find_all("span", cls="tag-immutable") == []
    entries = history_rows(page(http, f"/ui/{repo}/disk/locked"))
    assert entries[0][1].text.strip() == "immutable"


@pytest.mark.slow  # a server of its own
def test_an_operators_rule_is_named_as_what_makes_the_tag_immutable(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory("--immutable-tags", "base/*/stable")
    with running.client() as client:
        assert upload(client, "/reg/base/osimg/stable", random_image(100)).status_code == 201
        assert upload(client, "/reg/base/osimg/edge", random_image(100)).status_code == 201
        shown = facts(page(client, "/ui/base/osimg/stable"))["Immutable"]
        assert shown == "yes, by the operator's rule base/*/stable"
        cells = table_cells(page(client, "/ui/base/osimg"))
        marks = cells["stable"][0].find_all("span", cls="tag-immutable")
        assert [m.text for m in marks] == ["immutable (rule)"]
        assert marks[0].attrs["title"] == "immutable by the operator's rule base/*/stable"
        assert cells["edge"][0].find_all("span", cls="tag-immutable") == []


def test_the_containerdisk_reference_is_the_manifest_digest_v2_answers(
    http: httpx.Client, server: RunningServer, repo: str
) -> None:
    data = random_image(4096)
    response = upload(http, f"/reg/{repo}/vmdisk/v1", data)
    assert response.status_code == 201, response.text
    _, digest = manifest_of(http, f"{repo}/vmdisk", "v1")  # computes it if the task has not yet
    host = urlsplit(str(http.base_url)).netloc
    document = page(http, f"/ui/{repo}/vmdisk/v1")
    reference = snippet(document, "containerdisk")
    assert reference == f"{host}/{repo}/vmdisk@{digest}"
    volume = yaml.safe_load(snippet(document, "containerdisk-volume"))
    assert volume["volumes"][0]["containerDisk"]["image"] == reference
    assert manifest_of(http, f"{repo}/vmdisk", reference.rpartition("@")[2])[1] == digest
    assert document.find_all(id="containerdisk-pending") == []


def test_a_containerdisk_digest_not_computed_yet_is_said_so(
    http: httpx.Client, server: RunningServer, repo: str
) -> None:
    data = random_image(2048)
    response = upload(http, f"/reg/{repo}/vmdisk/v1", data)
    assert response.status_code == 201, response.text
    manifest_of(http, f"{repo}/vmdisk", "v1")  # computed and stored: nothing writes it again
    digest = blake3_hex(data)
    sql(
        server.data_root,
        "UPDATE blobs SET oci_layer = NULL, oci_config = NULL, oci_manifest = NULL"
        " WHERE digest = ?",
        digest,
    )
    document = page(http, f"/ui/{repo}/vmdisk/v1")
    assert document.find_all("pre", id="use-containerdisk") == []
    note = document.one(id="containerdisk-pending").text
    assert "not computed yet" in note
    assert f"/{repo}/vmdisk:v1" in note


def test_the_pull_command_pulls_the_pinned_bytes(
    http: httpx.Client, repo: str, tmp_path: Path
) -> None:
    data = random_image(3000)
    assert upload(http, f"/reg/{repo}/disk/v1", data).status_code == 201
    command = shlex.split(snippet(page(http, f"/ui/{repo}/disk/v1"), "pull"))
    assert command == [
        "cloudimg",
        "pull",
        "--server",
        f"{str(http.base_url).rstrip('/')}/reg",
        f"{repo}/disk@sha256:{sha256_hex(data)}",
        "disk-v1.raw",
    ]
    # The tag moves: the command still pulls the bytes it names.
    assert upload(http, f"/reg/{repo}/disk/v1", random_image(1000)).status_code == 201
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDIMG_")}
    done = subprocess.run(
        [sys.executable, "-m", "cloudimg", *command[1:], "--quiet"],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "disk-v1.raw").read_bytes() == data


# -- the registry's address in the snippets -------------------------------------------

HOSTILE_HOSTS = [
    "evil.example$(id)",
    "evil.example`id`",
    "evil.example;id",
    "evil.example/x?y",
    "user@evil.example",
    "evil.example:80:80",
    "evil.example:http",
    "'evil\"host",
    "[::1",
    "[fe80::1%25eth0]:80",
    "evil%2eexample",
    "evil example",
]


def every_snippet(document: Element) -> str:
    """The text of every copyable snippet, and of the notes that name a host."""
    texts = [pre.text for pre in document.find_all("pre")]
    texts += [note.text for note in document.find_all(id="containerdisk-pending")]
    return "\n".join(texts)


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_a_host_header_that_is_not_host_port_never_reaches_a_command(
    http: httpx.Client, repo: str, host: str
) -> None:
    data = random_image(2000)
    assert upload(http, f"/reg/{repo}/disk/v1", data).status_code == 201
    assert upload(http, f"/reg/{repo}/disk/v1", random_image(1000)).status_code == 201
    response = http.get(f"/ui/{repo}/disk/v1", headers={"host": host})
    if response.status_code == 400:  # refused before routing: a Host Litestar does not take
        refused = error_page(response, 400, "INVALID_ARGUMENT")
        assert not refused.find_all("pre")
        return
    assert response.status_code == 200, response.text
    document = parse_page(response)
    shown = every_snippet(document)
    assert "evil" not in shown
    assert "REGISTRY_HOST" in snippet(document, "url")
    assert "REGISTRY_HOST" in snippet(document, "qemu-convert")
    assert "REGISTRY_HOST" in snippet(document, "pull")
    assert all("REGISTRY_HOST" in command for command in rollback_commands(document).values())
    assert shlex.split(snippet(document, "qemu-convert"))[8].startswith("http://REGISTRY_HOST/reg/")
    assert "REGISTRY_HOST" in document.one("p", id="host-note").text
    # The download link is relative: it works whatever the page was asked for.
    assert str(document.one("a", id="download").attrs["href"]).startswith("/reg/")


@pytest.mark.parametrize(
    "host", ["registry.example:8443", "registry.example", "10.1.2.3:80", "[::1]:8080", "reg_1.lab"]
)
def test_a_valid_host_header_is_the_address_the_snippets_name(
    http: httpx.Client, repo: str, host: str
) -> None:
    data = random_image(2000)
    assert upload(http, f"/reg/{repo}/disk/v1", data).status_code == 201
    document = parse_page(http.get(f"/ui/{repo}/disk/v1", headers={"host": host}))
    url = f"http://{host}/reg/{repo}/disk/sha256:{sha256_hex(data)}"
    assert snippet(document, "url") == url
    assert shlex.split(snippet(document, "qemu-convert"))[8] == url
    assert shlex.split(snippet(document, "pull"))[3] == f"http://{host}/reg"
    assert not document.find_all(id="host-note")


def test_a_public_url_names_the_registry_whatever_the_host_header(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory(env={"CLOUDIMG_PUBLIC_URL": "https://registry.example.com/"})
    data = random_image(2000)
    with running.client() as http:
        assert upload(http, "/reg/lab/disk/v1", random_image(1000)).status_code == 201
        assert upload(http, "/reg/lab/disk/v1", data).status_code == 201
        manifest_of(http, "lab/disk", "v1")  # the containerDisk digest, computed
        for host in (None, "evil.example$(id)", "other.example:9000"):
            headers = {} if host is None else {"host": host}
            document = parse_page(http.get("/ui/lab/disk/v1", headers=headers))
            pinned = f"https://registry.example.com/reg/lab/disk/sha256:{sha256_hex(data)}"
            assert snippet(document, "url") == pinned
            assert (
                yaml.safe_load(snippet(document, "datavolume"))["spec"]["source"]["http"]["url"]
                == pinned
            )
            assert shlex.split(snippet(document, "pull"))[3] == "https://registry.example.com/reg"
            assert snippet(document, "containerdisk").startswith("registry.example.com/lab/disk@")
            commands = rollback_commands(document).values()
            assert [shlex.split(c)[3] for c in commands] == ["https://registry.example.com/reg"]
            assert "evil" not in every_snippet(document)
            assert "other.example" not in every_snippet(document)
            assert not document.find_all(id="host-note")


@pytest.mark.parametrize(
    "url",
    [
        "registry.example.com",
        "ftp://registry.example.com",
        "https://registry.example.com/images",
        "https://user:pw@registry.example.com",
        "https://registry.example.com$(id)",
        "https://registry.example.com:99999",
    ],
)
def test_a_public_url_that_is_not_scheme_host_port_is_refused(tmp_path: Path, url: str) -> None:
    done = cli(
        "serve",
        "--listener-addr",
        "127.0.0.1:0",
        "--data-root",
        str(tmp_path / "d"),
        "--public-url",
        url,
    )
    assert done.returncode == 2, done.stderr
    assert "--public-url" in done.stderr
    assert not (tmp_path / "d").exists()


def test_the_pages_and_their_errors_are_not_cached_and_the_static_files_may_be(
    http: httpx.Client, repo: str
) -> None:
    assert upload(http, f"/reg/{repo}/disk/v1", random_image(100)).status_code == 201
    pages = [f"/ui/{repo}", f"/ui/{repo}/disk", f"/ui/{repo}/disk/v1", "/ui/_storage"]
    for path in ["/ui/", *pages, "/ui/_query?q=has:os"]:
        assert http.get(path).headers["cache-control"] == "no-store", path
    assert http.get(f"/ui/{repo}/disk/v9").headers["cache-control"] == "no-store"
    assert "no-store" not in http.get("/ui/_static/style.css").headers.get("cache-control", "")


# -- storage ---------------------------------------------------------------------------


def figures(document: Element) -> dict[str, int]:
    """The chart's legend: segment class -> bytes."""
    legend = document.one("ul", cls="legend")
    return {
        str(li.one("rect").attrs["class"]): int(str(li.one("data").attrs["value"]))
        for li in legend.find_all("li")
    }


@pytest.mark.slow  # a server of its own and a gc run in another process
def test_storage_chart_shows_the_metrics_figures(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory()
    with running.client() as client:
        shared, alone = random_image(5000), random_image(700)
        for path in ["aaa/img/v1", "bbb/img/v1", "bbb/img/v2"]:
            assert upload(client, f"/reg/{path}", shared).status_code == 201
        assert upload(client, "/reg/ccc/img/v1", alone).status_code == 201
        document = page(client, "/ui/_storage")
        assert figures(document) == {
            "seg-stored": len(shared) + len(alone),
            "seg-dedup": 2 * len(shared),
            "seg-history": 0,
            "seg-oci": 0,
            "seg-orphan": 0,
        }
        metrics = scrape(client)  # the same figures, as /metrics exports them
        assert figures(document)["seg-dedup"] == metrics["cloudimg_deduplicated_bytes_saved"]
        assert (
            sum(figures(document).values()) - figures(document)["seg-dedup"]
            == (metrics["cloudimg_stored_bytes"])
        )
        svg = document.one("svg", cls="bars")
        assert svg.attrs["role"] == "img"
        assert "deduplication saves" in svg.one("desc").text
        bars = [float(str(r.attrs["width"])) for r in svg.find_all("rect")]
        assert max(bars) <= 600
        assert "No" in document.one("section").text  # no gc run yet
        # Moving ccc's tag leaves its old bytes held only by the tag's retained history.
        assert upload(client, "/reg/ccc/img/v1", random_image(300)).status_code == 201
        document = page(client, "/ui/_storage")
        assert figures(document)["seg-history"] == len(alone)
        du = cli_json("du", "--data-root", str(running.data_root), check=0)
        assert figures(document)["seg-history"] == du["history_only_bytes"]
        assert "held only by tag history" in document.one("svg", cls="bars").one("desc").text
        cli("gc", "--grace", "0", "--data-root", str(running.data_root), check=0)
        after_gc = page(client, "/ui/_storage").one("section").text
        assert "Last run:" in after_gc
        assert "1 runs recorded" in after_gc


def test_storage_chart_counts_kept_v2_layers_and_configs_as_du_does(
    server_factory: Callable[..., RunningServer],
) -> None:
    running = server_factory()
    with running.client() as client:
        layer = gzip.compress(tar_layer(random_image(20_000)), mtime=0)
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        for blob in (config, layer):
            push_blob(client, "vms/pushed", blob)
        manifest = container_manifest(layer, "application/vnd.oci.image.layer.v1.tar+gzip", config)
        assert put_manifest(client, "vms/pushed", "v1", manifest).status_code == 201
        shown = figures(page(client, "/ui/_storage"))
        du = cli_json("du", "--data-root", str(running.data_root), check=0)
        # The layer and config are held by the kept push, not left for gc.
        assert shown["seg-oci"] == du["oci_kept_bytes"] == len(layer) + len(config)
        assert shown["seg-orphan"] == 0
        assert sum(shown.values()) - shown["seg-dedup"] == du["stored_bytes"]


# -- flags and auth --------------------------------------------------------------------


def test_no_web_leaves_only_the_api(server_factory: Callable[..., RunningServer]) -> None:
    running = server_factory(env={"CLOUDIMG_WEB": "false"})  # what --no-web sets
    with running.client() as client:
        assert_error(client.get("/"), 404, "NOT_FOUND")
        assert_error(client.get("/ui/"), 404, "NOT_FOUND")
        assert_error(client.get("/ui/_static/style.css"), 404, "NOT_FOUND")
        assert client.get("/reg").status_code == 200


def test_pages_follow_the_www_prefix(server_factory: Callable[..., RunningServer]) -> None:
    running = server_factory("--www-prefix", "/mirror")
    with running.client() as client:
        assert upload(client, "/mirror/reg/lab/img/v1", b"bytes").status_code == 201
        response = client.get("/mirror")
        assert (response.status_code, response.headers["location"]) == (302, "/mirror/ui/")
        assert_error(client.get("/ui/"), 404, "NOT_FOUND")
        home = page(client, "/mirror/ui/")
        assert home.one("a", href="/mirror/ui/lab").text == "lab"
        tag = page(client, "/mirror/ui/lab/img/v1")
        assert snippet(tag, "url").startswith(f"{running.base_url}/mirror/reg/lab/img/sha256:")


def test_a_registry_api_at_ui_is_refused_while_the_pages_are_on(tmp_path: Path) -> None:
    done = cli(
        "serve",
        "--listener-addr",
        "127.0.0.1:0",
        "--data-root",
        str(tmp_path / "d"),
        "--repo-prefix",
        "ui",
    )
    assert done.returncode == 2
    assert "--repo-prefix" in done.stderr
    assert "pages" in done.stderr
    assert not (tmp_path / "d").exists()


def test_read_auth_applies_to_the_pages(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    (tmp_path / "tokens").write_text(f"{WRITE_TOKEN}\n")
    (tmp_path / "credentials").write_text(f"{READ_USER}:{READ_PASSWORD}\n")
    running = server_factory(
        "--write-token-file",
        str(tmp_path / "tokens"),
        "--read-auth",
        "basic",
        "--read-credentials-file",
        str(tmp_path / "credentials"),
    )
    with running.client(headers=bearer(WRITE_TOKEN)) as writer:
        assert upload(writer, "/reg/lab/img/v1", b"x").status_code == 201
    with running.client() as client:
        for path in [
            "/",
            "/ui/",
            "/ui/lab",
            "/ui/lab/img",
            "/ui/lab/img/v1",
            "/ui/_storage",
            "/ui/_query?q=has:os",
            "/ui/_static/app.js",
        ]:
            refused = client.get(path)
            error_page(refused, 401, "UNAUTHENTICATED")
            assert refused.headers["www-authenticate"].startswith("Basic ")
            wrong = client.get(path, headers=basic(READ_USER, "wrong"))
            error_page(wrong, 401, "UNAUTHENTICATED")
            assert wrong.headers["www-authenticate"].startswith("Basic ")
            for credentials in (basic(READ_USER, READ_PASSWORD), bearer(WRITE_TOKEN)):
                assert client.get(path, headers=credentials).status_code in (200, 302)
        # The API's refusal stays JSON.
        api = client.get("/reg/lab/img/v1/meta")
        assert_error(api, 401, "UNAUTHENTICATED")
        assert api.headers["www-authenticate"].startswith("Basic ")
    with running.client(headers=basic(READ_USER, READ_PASSWORD)) as reader:
        # CDI needs the read credentials too: the DataVolume says where they go.
        assert "secretRef" in snippet(page(reader, "/ui/lab/img/v1"), "datavolume")
