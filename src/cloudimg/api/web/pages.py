"""Route handlers of the web pages: the same catalog reads as ``/reg``, rendered as HTML.

The pages live under ``<www-prefix>ui/`` so that none collides with ``/reg``,
``/docs``, ``/healthz``, ``/readyz``, ``/metrics`` or ``/v2`` (all valid repository
names); pages that are not a repository (the storage chart, the stylesheet and the
script) start with ``_``, which no repository name may contain. They carry the
registry's read guard, stay out of the OpenAPI document, and answer with a Content
Security Policy that allows the page's own stylesheet and script and nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from litestar import Request, Router, get
from litestar.params import Parameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from litestar.types import Guard

from cloudimg.api.web.chart import WIDTH, storage_chart
from cloudimg.api.web.snippets import FORMAT_PLACEHOLDER, ContainerDisk, container_disk, use_it
from cloudimg.catalog import Catalog, HistoryEntry, Page, TagInfo
from cloudimg.config import Settings, normalize_prefix
from cloudimg.errors import NotFoundError
from cloudimg.gc_record import read_gc_record
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name
from cloudimg.units import human_bytes

__all__ = ["template_config", "web_routes", "web_ui_base"]

_STATIC = Path(__file__).parent / "static"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_MAX_QUERY = 200
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

Filter = Annotated[str, Parameter(max_length=_MAX_QUERY, required=False)]
After = Annotated[str | None, Parameter(max_length=_MAX_QUERY, required=False)]
Limit = Annotated[int, Parameter(ge=1, le=MAX_PAGE_SIZE, required=False)]


def web_ui_base(settings: Settings) -> str:
    """Where the pages are: ``/ui``, or ``/mirror/ui`` for ``--www-prefix /mirror``."""
    return normalize_prefix(settings.www_prefix).rstrip("/") + "/ui"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja over the package's templates; every value is HTML-escaped unless marked safe."""
    environment = Environment(
        loader=PackageLoader("cloudimg.api.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
    )
    environment.filters["bytes"] = human_bytes
    return TemplateConfig(engine=JinjaTemplateEngine.from_environment(environment))


@dataclass(frozen=True, slots=True)
class _Listing:
    """One page of a listing, and the link to the next one."""

    rows: list[Any]
    after: str | None
    """Where this page starts (None: the first page)."""
    next_after: str | None
    query: str
    limit: int


def _listing(rows: list[Any], page: Page, name_of: Callable[[Any], str]) -> _Listing:
    assert page.limit is not None
    shown = page.limit - 1  # one more row was asked for, to know whether a next page exists
    more = len(rows) > shown
    rows = rows[:shown]
    return _Listing(rows, page.after, name_of(rows[-1]) if more else None, page.contains, shown)


def _page(q: str, after: str | None, limit: int) -> Page:
    return Page(after=after or None, limit=limit + 1, contains=q.strip())


def _api_url(request: Request[Any, Any, Any], settings: Settings) -> str:
    """The registry API's absolute URL, as the client reached this server."""
    return f"{request.url.scheme}://{request.url.netloc}{settings.api_base}"


def _context(settings: Settings, **values: Any) -> dict[str, Any]:
    ui = web_ui_base(settings)
    return {
        "ui": ui,
        "static": f"{ui}/_static",
        "api_base": settings.api_base,
        "default_limit": PAGE_SIZE,
        **values,
    }


@get("/", name="web-repositories")
async def repositories_page(
    catalog: Catalog,
    settings: Settings,
    q: Filter = "",
    after: After = None,
    limit: Limit = PAGE_SIZE,
) -> Template:
    page = _page(q, after, limit)
    listing = _listing(await catalog.list_repositories(page), page, str)
    return Template("repositories.html", context=_context(settings, listing=listing))


@get("/_storage", name="web-storage")
async def storage_page(catalog: Catalog, settings: Settings) -> Template:
    totals = await catalog.storage_totals()
    gc = await asyncio.to_thread(read_gc_record, settings.data_root)
    chart = storage_chart(totals, gc)
    return Template("storage.html", context=_context(settings, chart=chart, width=WIDTH))


@get("/{repo:str}", name="web-images")
async def images_page(
    catalog: Catalog,
    settings: Settings,
    repo: str,
    q: Filter = "",
    after: After = None,
    limit: Limit = PAGE_SIZE,
) -> Template:
    validate_repo_name(repo)
    page = _page(q, after, limit)
    listing = _listing(await catalog.list_images(repo, page), page, str)
    return Template("images.html", context=_context(settings, repo=repo, listing=listing))


@get("/{repo:str}/{image:str}", name="web-tags")
async def tags_page(
    catalog: Catalog,
    settings: Settings,
    repo: str,
    image: str,
    q: Filter = "",
    after: After = None,
    limit: Limit = PAGE_SIZE,
) -> Template:
    validate_repo_name(repo)
    validate_image_name(image)
    page = _page(q, after, limit)
    infos = await catalog.list_tag_infos(repo, image, page)
    listing = _listing(infos, page, lambda info: info.tag)
    rules = {info.tag: catalog.immutable_by_rule((repo, image, info.tag)) for info in listing.rows}
    context = _context(settings, repo=repo, image=image, listing=listing, rules=rules)
    return Template("tags.html", context=context)


async def _history(catalog: Catalog, info: TagInfo) -> list[HistoryEntry]:
    """The tag's history, newest first; empty for a tag written before history was kept."""
    try:
        return await catalog.tag_history(info.repo, info.image, info.tag)
    except NotFoundError:
        return []


async def _container_disk(
    catalog: Catalog, info: TagInfo, request: Request[Any, Any, Any]
) -> ContainerDisk | None:
    """The containerDisk by digest; None until the background task computed the manifest."""
    digests = await catalog.oci_digests(info.digest)
    if digests is None:
        return None
    return container_disk(info, request.url.netloc, manifest_sha256=digests[2])


@get("/{repo:str}/{image:str}/{tag:str}", name="web-tag")
async def tag_page(
    request: Request[Any, Any, Any],
    catalog: Catalog,
    settings: Settings,
    repo: str,
    image: str,
    tag: str,
) -> Template:
    names = validate_repo_name(repo), validate_image_name(image), validate_tag_name(tag)
    info = await catalog.get_tag(*names)
    panel = use_it(info, _api_url(request, settings), read_auth=settings.read_auth == "basic")
    context = _context(
        settings,
        info=info,
        use_it=panel,
        placeholder=FORMAT_PLACEHOLDER,
        container_disk=await _container_disk(catalog, info, request),
        history=await _history(catalog, info),
        rule=catalog.immutable_by_rule(names),
        request_host=request.url.netloc,
    )
    return Template("tag.html", context=context)


def web_routes(settings: Settings, guards: list[Guard]) -> list[Router]:
    """The pages, their static files and the redirect from ``<www-prefix>``, behind ``guards``."""
    ui = web_ui_base(settings)
    home = normalize_prefix(settings.www_prefix)

    @get(home, name="web-home", include_in_schema=False)
    async def to_pages() -> Redirect:
        return Redirect(path=f"{ui}/", status_code=302)

    pages = Router(
        path=ui,
        route_handlers=[repositories_page, storage_page, images_page, tags_page, tag_page],
        include_in_schema=False,
        response_headers=_SECURITY_HEADERS,
    )
    static = create_static_files_router(
        path=f"{ui}/_static", directories=[_STATIC], name="web-static", include_in_schema=False
    )
    return [Router(path="/", route_handlers=[to_pages, pages, static], guards=guards)]
