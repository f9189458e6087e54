"""The web pages' metadata query (``/ui/_query``), against real servers on both backends:
its terms are ``/reg/_query``'s conditions and it answers what that answers, a page at
a time; metadata shown on the pages links to it; bad terms are HTML 400 pages. The
substring filter of the other pages stays as it was (tests/test_web.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import RunningServer, upload
from tests.support import random_image
from tests.test_web import Element, error_page, next_page, page, parse_page


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _shown(document: Element) -> list[str]:
    """The ``repo/image/tag`` of each row the query page shows."""
    if not document.find_all(id="rows"):
        return []
    return [
        str(e.attrs["data-tag"]) for e in document.one(id="rows").walk() if "data-tag" in e.attrs
    ]


def _pages(http: httpx.Client, q: str, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    query: dict[str, str] | None = {"q": q, "limit": str(limit)}
    while query is not None:
        document = page(http, "/ui/_query", **query)
        pages.append(_shown(document))
        query = next_page(document)
    return pages


def _api(http: httpx.Client, **params: Any) -> list[str]:
    response = http.get("/reg/_query", params={**params, "limit": 500})
    assert response.status_code == 200, response.text
    return [f"{r['repo']}/{r['image']}/{r['tag']}" for r in response.json()["data"]]


def _write(http: httpx.Client, repo: str) -> None:
    metas = {
        f"{repo}-a/disk/v1": {"os": "ubuntu", "gpu": "nvidia"},
        f"{repo}-a/disk/v2": {"os": "ubuntu", "note": "two words"},
        f"{repo}-a/other/v1": {"os": "debian"},
        f"{repo}-b/disk/v1": {"os": "ubuntu", "gpu": "amd"},
        f"{repo}-b/disk/v3": {"os": "ubuntu"},
    }
    for path, meta in metas.items():
        assert upload(http, f"/reg/{path}", random_image(4096), meta).status_code == 201


def test_the_page_answers_what_the_api_answers_page_by_page(http: httpx.Client, repo: str) -> None:
    _write(http, repo)
    pages = _pages(http, f"os=ubuntu repo:{repo}", limit=2)
    expected = [f"{repo}-a/disk/v1", f"{repo}-a/disk/v2", f"{repo}-b/disk/v1", f"{repo}-b/disk/v3"]
    assert pages == [expected[:2], expected[2:]]
    assert expected == _api(http, meta="os=ubuntu", repo_prefix=repo)
    assert _pages(http, f"has:gpu repo:{repo}", 50) == [[f"{repo}-a/disk/v1", f"{repo}-b/disk/v1"]]
    both = f"repo:{repo} has:gpu os=ubuntu image:di 'note=two words'"
    assert _pages(http, both, 50) == [[]]
    assert _pages(http, f'repo:{repo} "note=two words"', 50) == [[f"{repo}-a/disk/v2"]]
    # Each row shows its metadata; the name links to the tag's page.
    document = page(http, "/ui/_query", q=f"repo:{repo}-b gpu=amd")
    (row,) = document.one(id="rows").find_all("tr")
    link = row.one("th").one("a")
    assert link.attrs["href"] == f"/ui/{repo}-b/disk/v1"
    assert [li.text for li in row.one("ul", cls="meta").find_all("li")] == [
        "gpu: amd",
        "os: ubuntu",
    ]


def test_an_empty_box_shows_the_form_and_no_match_says_so(http: httpx.Client, repo: str) -> None:
    document = page(http, "/ui/_query")
    assert document.one("input", id="q").attrs["value"] == ""
    assert _shown(document) == []
    document = page(http, "/ui/_query", q=f"repo:{repo} os=none")
    assert _shown(document) == []
    assert f"No tag matches repo:{repo} os=none" in document.one("main").text


def test_metadata_on_the_tags_page_links_to_the_query(http: httpx.Client, repo: str) -> None:
    _write(http, repo)
    tags = page(http, f"/ui/{repo}-a/disk")
    links = {
        a.text: str(a.attrs["href"])
        for meta in tags.find_all("ul", cls="meta")
        for a in meta.find_all("a")
    }
    assert set(links) == {"gpu: nvidia", "os: ubuntu", "note: two words"}
    found = http.get(links["note: two words"])
    assert found.status_code == 200
    # Other tests' tags may hold the same pair: the API's answer is the page's.
    assert f"{repo}-a/disk/v2" in _shown(parse_page(found))
    assert _shown(parse_page(found)) == _api(http, meta="note=two words")[:50]
    # A pair links to every repository's tags with it (here narrowed to this test's).
    (term,) = parse_qs(urlsplit(links["os: ubuntu"]).query)["q"]
    assert term == "os=ubuntu"
    found = _pages(http, f"{term} repo:{repo}", 50)
    assert found == [
        [f"{repo}-a/disk/v1", f"{repo}-a/disk/v2", f"{repo}-b/disk/v1", f"{repo}-b/disk/v3"]
    ]


@pytest.mark.parametrize(
    "q",
    [
        "ubuntu",  # plain text: the other pages' filter, not a condition
        "has:",
        "=ubuntu",
        '"os=unclosed',
        "repo:UPPER",
        "repo:a repo:b",
        " ".join(f"k{i}=v" for i in range(17)),
        "os=" + "x" * 257,
    ],
)
def test_bad_terms_are_400_pages_that_say_why(http: httpx.Client, q: str) -> None:
    document = error_page(http.get("/ui/_query", params={"q": q}), 400, "INVALID_ARGUMENT")
    assert document.one("main").text.strip()


def test_a_bad_cursor_is_a_400_page(http: httpx.Client) -> None:
    error_page(http.get("/ui/_query", params={"q": "os=x", "after": "no-slashes"}), 400)
