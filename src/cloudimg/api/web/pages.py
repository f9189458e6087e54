"""Route handlers of the web pages: the same catalog reads as ``/reg``, rendered as HTML.

The pages live under ``<www-prefix>ui/`` so that none collides with ``/reg``,
``/docs``, ``/healthz``, ``/readyz``, ``/metrics`` or ``/v2`` (all valid repository
names); pages that are not a repository (the storage chart, the stylesheet and the
script) start with ``_``, which no repository name may contain. They carry the
registry's read guard, stay out of the OpenAPI document, and answer with a Content
Security Policy that allows the page's own stylesheet and script and nothing else, and
``Cache-Control: no-store`` (docs/web.md says why). Their errors are HTML pages
(``cloudimg.api.web.errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from jinja2 import Environment, PackageLoader, StrictUndefined
from litestar import Request, Router, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter, SkipValidation
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from litestar.types import Guard

from cloudimg.api.meta_query import meta_query, query_cursor, query_term, query_terms
from cloudimg.api.policy import grants_of
from cloudimg.api.web.chart import WIDTH, storage_chart
from cloudimg.api.web.snippets import (
    FORMAT_PLACEHOLDER,
    HOST_PLACEHOLDER,
    ContainerDisk,
    container_disk,
    rollback,
    use_it,
)
from cloudimg.catalog import Catalog, HistoryEntry, ImageDetails, Page, RepositoryDetails, TagInfo
from cloudimg.config import Settings, is_host_port, normalize_prefix, parse_public_url
from cloudimg.core import QuotaGate
from cloudimg.errors import InvalidArgumentError, NotFoundError
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name
from cloudimg.oci.store import OciStore
from cloudimg.units import human_bytes

__all__ = ["PAGE_HEADERS", "template_config", "web_context", "web_routes", "web_ui_base"]

_STATIC = Path(__file__).parent / "static"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_MAX_QUERY = 200
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # No cache keeps a page: it may show what read auth protects, and its snippets name
    # the host it was asked for (docs/web.md, "Access and safety").
    "Cache-Control": "no-store",
}
"""What every page answers with, its error pages too."""

Filter = Annotated[str, QueryParameter(max_length=_MAX_QUERY, required=False)]
After = Annotated[str | None, QueryParameter(max_length=_MAX_QUERY, required=False)]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE, required=False)]
SortParam = Annotated[Literal["name", "size", "updated"], QueryParameter(required=False)]
AfterValue = Annotated[str | None, QueryParameter(max_length=_MAX_QUERY, required=False)]


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
    environment.filters["query_term"] = query_term
    return TemplateConfig(engine=JinjaTemplateEngine.from_environment(environment))


@dataclass(frozen=True, slots=True)
class _Listing:
    """One page of a listing, and the links to the first and the next one."""

    rows: list[Any]
    after: str | None
    """Where this page starts (None: the first page)."""
    next_query: dict[str, str] | None
    """The query of the next page (None: this is the last)."""
    query: str
    limit: int
    sort: str = "name"

    def link(self, **changes: str) -> dict[str, str]:
        """The query of this listing from its first page, with ``changes``."""
        query = {"q": self.query, "limit": str(self.limit)}
        if self.sort != "name":
            query["sort"] = self.sort
        return {**query, **changes}


def _listing(
    rows: list[Any],
    page: Page,
    name_of: Callable[[Any], str],
    value_of: Callable[[Any], str] | None = None,
) -> _Listing:
    """The rows of ``page`` (asked with one row more than shown) as a listing.

    ``value_of``: the sort figure of a row as the next page's ``after_value`` carries it,
    for a listing sorted by something other than the name.
    """
    assert page.limit is not None
    shown = page.limit - 1  # one more row was asked for, to know whether a next page exists
    more = len(rows) > shown
    rows = rows[:shown]
    listing = _Listing(rows, page.after, None, page.contains, shown, page.sort)
    if not more:
        return listing
    after = {"after": name_of(rows[-1])}
    if page.sort != "name" and value_of is not None:
        after["after_value"] = value_of(rows[-1])
    return _Listing(rows, page.after, listing.link(**after), page.contains, shown, page.sort)


def _page(
    q: str,
    after: str | None,
    limit: int,
    sort: Literal["name", "size", "updated"] = "name",
    after_value: str | None = None,
) -> Page:
    """What to read for a listing page; ``after_value`` parsed as ``sort`` needs it."""
    after = after or None
    value: int | datetime | None = None
    if sort != "name" and after is not None:
        value = _sort_value(sort, after_value)
    return Page(after=after, limit=limit + 1, contains=q.strip(), sort=sort, after_value=value)


def _sort_value(sort: str, text: str | None) -> int | datetime:
    """The figure a page sorted by ``sort`` starts after: bytes, or an ISO 8601 time."""
    if text is None:
        raise InvalidArgumentError(f"a page sorted by {sort} after a name needs after_value")
    if sort == "size":
        if text.isascii() and text.isdigit() and int(text) < 2**63:  # a BIGINT
            return int(text)
        raise InvalidArgumentError("after_value of a page sorted by size is a number of bytes")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidArgumentError(
            "after_value of a page sorted by updated is an ISO 8601 time with its offset"
        )
    return when


def _figure(sort: str) -> Callable[[RepositoryDetails | ImageDetails], str]:
    """How a summary row's sort figure is written in the next page's link."""
    if sort == "size":
        return lambda row: str(row.size)
    return lambda row: row.updated.isoformat()


@dataclass(frozen=True, slots=True)
class _Address:
    """Where the snippets say the registry is."""

    origin: str
    """``scheme://host[:port]``."""
    host: str
    """``host[:port]``: what an OCI reference starts with."""
    source: Literal["configured", "request", "placeholder"]
    """``--public-url``, the page's ``Host``, or ``HOST_PLACEHOLDER`` for a ``Host`` that
    is not a valid ``host[:port]``."""


def _address(request: Request[Any, Any, Any], settings: Settings) -> _Address:
    """The registry's address for the snippets: ``--public-url``, else the ``Host`` the
    page was asked for when ``is_host_port`` accepts it, else a placeholder."""
    if settings.public_url is not None:
        origin = parse_public_url(settings.public_url)
        return _Address(origin, origin.partition("://")[2], "configured")
    # From the scope and the raw header: ``request.url`` fails on a Host such as
    # ``x:80:80`` (urllib cannot read its port), and this page must not.
    scheme = "https" if request.scope.get("scheme") == "https" else "http"
    host = request.headers.get("host") or _server_authority(request.scope.get("server"))
    if is_host_port(host):
        return _Address(f"{scheme}://{host}", host, "request")
    return _Address(f"{scheme}://{HOST_PLACEHOLDER}", HOST_PLACEHOLDER, "placeholder")


def _server_authority(server: tuple[str, int | None] | None) -> str:
    """``host:port`` of the socket a request without ``Host`` reached ("" if unknown)."""
    if server is None:
        return ""
    host, port = server
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


def web_context(settings: Settings, **values: Any) -> dict[str, Any]:
    """What every page's template is given (``base.html`` needs ``ui`` and ``static``)."""
    ui = web_ui_base(settings)
    return {
        "ui": ui,
        "static": f"{ui}/_static",
        "api_base": settings.api_base,
        "default_limit": PAGE_SIZE,
        **values,
    }


def _shown(listing: _Listing, keep: Callable[[Any], bool]) -> _Listing:
    """The listing's rows the caller may pull (``--policy-file``), as the API's listings
    filter theirs: the next page still starts after the last row read, so paging
    reaches the end (a page may show fewer rows than its limit)."""
    return replace(listing, rows=[row for row in listing.rows if keep(row)])


@get("/", name="web-repositories")
async def repositories_page(
    request: Request[Any, Any, Any],
    catalog: NamedDependency[Catalog],
    settings: NamedDependency[Settings],
    q: Filter = "",
    after: After = None,
    limit: Limit = PAGE_SIZE,
    sort: SortParam = "name",
    after_value: AfterValue = None,
) -> Template:
    page = _page(q, after, limit, sort, after_value)
    rows = await catalog.summaries.summarize_repositories(page)
    listing = _listing(rows, page, lambda row: row.repository, _figure(sort))
    grants = grants_of(request)
    listing = _shown(listing, lambda row: grants.lists_repo(row.repository))
    return Template("repositories.html", context=web_context(settings, listing=listing))


@get("/_storage", name="web-storage")
async def storage_page(
    request: Request[Any, Any, Any],
    catalog: NamedDependency[Catalog],
    settings: NamedDependency[Settings],
    quotas: NamedDependency[SkipValidation[QuotaGate | None]],
) -> Template:
    totals = await catalog.reads.storage_totals()
    gc = await catalog.reads.gc_record()
    chart = storage_chart(totals, gc)
    # Use against quota of the repositories the caller may list (--policy-file).
    grants = grants_of(request)
    uses = [] if quotas is None else await quotas.uses()
    rows = [row for row in uses if grants.lists_repo(row.repo)]
    context = web_context(settings, chart=chart, width=WIDTH, quotas=rows)
    return Template("storage.html", context=context)


@get("/{repo:str}", name="web-images")
async def images_page(
    request: Request[Any, Any, Any],
    catalog: NamedDependency[Catalog],
    settings: NamedDependency[Settings],
    repo: FromPath[str],
    q: Filter = "",
    after: After = None,
    limit: Limit = PAGE_SIZE,
    sort: SortParam = "name",
    after_value: AfterValue = None,
) -> Template:
    validate_repo_name(repo)
    grants = grants_of(request)
    if not grants.lists_repo(repo):  # as the API: no hint that the repository exists
        raise NotFoundError("repository not found", {"repo": repo})
    page = _page(q, after, limit, sort, after_value)
    rows = await catalog.summaries.summarize_images(repo, page)
    listing = _listing(rows, page, lambda row: row.image, _figure(sort))
    listing = _shown(listing, lambda row: grants.allows("pull", repo, row.image))
    return Template("images.html", context=web_context(settings, repo=repo, listing=listing))


@get("/{repo:str}/{image:str}", name="web-tags")
async def tags_page(
    catalog: NamedDependency[Catalog],
    settings: NamedDependency[Settings],
    repo: FromPath[str],
    image: FromPath[str],
    q: Filter = "",
    after: After = None,
    limit: Limit = PAGE_SIZE,
) -> Template:
    validate_repo_name(repo)
    validate_image_name(image)
    page = _page(q, after, limit)
    infos = await catalog.reads.list_tag_infos(repo, image, page)
    listing = _listing(infos, page, lambda info: info.tag)
    rules = {
        info.tag: catalog.tags.immutable_by_rule((repo, image, info.tag)) for info in listing.rows
    }
    context = web_context(settings, repo=repo, image=image, listing=listing, rules=rules)
    return Template("tags.html", context=context)


Terms = Annotated[str, QueryParameter(max_length=2000, required=False)]


@get("/_query", name="web-query")
async def query_page(
    request: Request[Any, Any, Any],
    catalog: NamedDependency[Catalog],
    settings: NamedDependency[Settings],
    q: Terms = "",
    after: After = None,
    limit: Limit = PAGE_SIZE,
) -> Template:
    """Tags of every repository found by metadata: the search box's terms (``key=value``,
    ``has:key``, ``repo:prefix``, ``image:prefix``) are ``/reg/_query``'s conditions,
    checked as there and answered by the same catalog query, a page at a time."""
    wanted = meta_query(query_terms(q))
    rows: list[TagInfo] = []
    if q.strip():  # an empty box shows the form, not every tag of the registry
        rows = await catalog.reads.query_tags(wanted, limit + 1, query_cursor(after or None))
    more = len(rows) > limit
    rows = rows[:limit]
    listing = _Listing(rows, after or None, None, q.strip(), limit)
    if more:
        last = rows[-1]
        listing = _Listing(
            rows, listing.after, listing.link(after=f"{last.repo}/{last.image}/{last.tag}"),
            listing.query, limit,
        )  # fmt: skip
    grants = grants_of(request)
    listing = _shown(listing, lambda row: grants.allows("pull", row.repo, row.image))
    return Template("query.html", context=web_context(settings, listing=listing))


async def _history(catalog: Catalog, info: TagInfo) -> list[HistoryEntry]:
    """The tag's history, newest first; empty for a tag written before history was kept."""
    try:
        return await catalog.tags.tag_history(info.repo, info.image, info.tag)
    except NotFoundError:
        return []


async def _container_disk(oci: OciStore, info: TagInfo, host: str) -> ContainerDisk | None:
    """The containerDisk by digest; None until the background task computed the manifest."""
    digests = await oci.oci_digests(info.digest)
    if digests is None:
        return None
    return container_disk(info, host, manifest_sha256=digests[2])


_EXTENSIONS = {"vpc": "vhd"}
"""File name extensions of qemu-img format names that differ from them."""


def _download_name(info: TagInfo, format_known: bool) -> str:
    """The file name the download link suggests: ``<image>-<tag>.<format>``."""
    extension = "img"
    if format_known and info.format is not None:
        extension = _EXTENSIONS.get(info.format, info.format)
    return f"{info.image}-{info.tag}.{extension}"


@get("/{repo:str}/{image:str}/{tag:str}", name="web-tag")
async def tag_page(
    request: Request[Any, Any, Any],
    catalog: NamedDependency[Catalog],
    oci: NamedDependency[OciStore],
    settings: NamedDependency[Settings],
    repo: FromPath[str],
    image: FromPath[str],
    tag: FromPath[str],
) -> Template:
    names = validate_repo_name(repo), validate_image_name(image), validate_tag_name(tag)
    info = await catalog.reads.get_tag(*names)
    address = _address(request, settings)
    api_url = address.origin + settings.api_base
    panel = use_it(info, api_url, read_auth=settings.read_auth == "basic")
    history = await _history(catalog, info)
    rollbacks = {
        entry.id: rollback(info, api_url, entry.digest) for entry in history if entry.retained
    }
    context = web_context(
        settings,
        info=info,
        use_it=panel,
        placeholder=FORMAT_PLACEHOLDER,
        host_placeholder=HOST_PLACEHOLDER,
        address=address,
        download=_download_name(info, panel.format_known),
        container_disk=await _container_disk(oci, info, address.host),
        history=history,
        rollbacks=rollbacks,
        rule=catalog.tags.immutable_by_rule(names),
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
        route_handlers=[
            repositories_page,
            storage_page,
            query_page,
            images_page,
            tags_page,
            tag_page,
        ],
        include_in_schema=False,
        response_headers=PAGE_HEADERS,
    )
    static = create_static_files_router(
        path=f"{ui}/_static", directories=[_STATIC], name="web-static", include_in_schema=False
    )
    return [Router(path="/", route_handlers=[to_pages, pages, static], guards=guards)]
