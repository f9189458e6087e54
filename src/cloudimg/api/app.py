"""Application factory: wires settings, blob store, catalog and registry core into the app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.types import Guard

from cloudimg import __version__
from cloudimg.api.auth import OciAuth, RegistryAuth, load_registry_auth
from cloudimg.api.download import Redirects
from cloudimg.api.errors import exception_handlers
from cloudimg.api.metrics import Metrics, metrics_route
from cloudimg.api.middleware import HeaderLimit, Linger, RequestObserver
from cloudimg.api.openapi30 import OPENAPI_31_PATH, OpenAPI30JsonPlugin
from cloudimg.api.probes import HealthController, ReadinessController
from cloudimg.api.quota_file import load_quotas
from cloudimg.api.reg.controllers import RegistryController
from cloudimg.api.reg.events import EventsController
from cloudimg.api.reg.history import TagHistoryController
from cloudimg.api.web import template_config, web_routes, with_page_errors
from cloudimg.catalog import Catalog
from cloudimg.config import Settings, settings_from_json
from cloudimg.core import RegistryCore
from cloudimg.errors import CloudimgError
from cloudimg.oci.http.routes import oci_routes
from cloudimg.registry import open_registry
from cloudimg.webhooks import EventsConfig

__all__ = ["SETTINGS_ENV", "create_app", "create_app_from_env"]

log = logging.getLogger(__name__)

SETTINGS_ENV = "CLOUDIMG_WORKER_SETTINGS"
"""Environment variable in which ``cloudimg serve --workers N`` hands its settings to workers."""


def create_app(settings: Settings, auth: RegistryAuth | None) -> Litestar:
    """Build the ASGI app for ``settings``. The schema must be migrated already.

    ``auth``: the guard of the registry API as ``load_registry_auth`` loaded it once for
    this process (None: no authentication configured).
    """
    quotas = load_quotas(settings)  # before the catalog is opened: a bad file opens nothing
    registry = open_registry(settings, migrate=None)
    blobs, catalog = registry.blobs, registry.catalog
    # The pages carry the same guard as the API: read auth applies to both alike.
    guards: list[Guard] = [] if auth is None else [auth]
    # The write use cases of /reg over their collaborators; what inspection accepts
    # (qemu-img found on PATH or not) is settled here, once per app. The quotas hold
    # for every tag write through this catalog, /v2's too.
    core = RegistryCore.over(
        catalog,
        blobs,
        settings.inspection_policy,
        registry.oci,
        max_image_size=settings.max_image_size,
        quotas=quotas,
    )
    oci = oci_routes(
        registry,
        settings,
        []
        if auth is None
        else [
            OciAuth(
                auth.write_tokens,
                auth.read_credentials,
                body_timeout=auth.body_timeout,
                policy=auth.policy,
                oidc=auth.oidc,
            )
        ],
        core.quotas,
    )
    disks = oci.disks
    api_base = settings.api_base
    events_config = settings.events()
    event_source = events_config.source or settings.public_url or "cloudimg"
    redirects = Redirects(blobs, settings.redirect_expiry_secs, settings.redirect_downloads)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        blobs.ensure_layout()
        await _restore_trashed(catalog)
        # Hashes the containerDisk layers of blobs that have none yet (docs/oci.md).
        hashing = asyncio.ensure_future(disks.run())
        delivering = asyncio.ensure_future(_deliver(catalog, events_config, event_source))
        try:
            yield
        finally:
            for task in (hashing, delivering):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await disks.close()  # no catalog write after the close below
            await registry.close()

    api = Router(
        path=api_base,
        route_handlers=[RegistryController, TagHistoryController, EventsController],
        guards=guards,
    )
    web = web_routes(settings, guards) if settings.web else []
    # The pages answer their errors as HTML pages, the API as JSON (docs/web.md).
    handlers = (
        with_page_errors(exception_handlers, settings) if settings.web else exception_handlers
    )
    metrics = Metrics()
    blobs.stage_costs = metrics.upload_stage
    app = Litestar(
        route_handlers=[
            api,
            oci.router,
            HealthController,
            ReadinessController,
            metrics_route(metrics, catalog),
            *web,
        ],
        template_config=template_config() if settings.web else None,
        dependencies={
            "catalog": Provide(lambda: catalog, use_cache=True, sync_to_thread=False),
            "blobs": Provide(lambda: blobs, use_cache=True, sync_to_thread=False),
            "redirects": Provide(lambda: redirects, use_cache=True, sync_to_thread=False),
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            **oci.dependencies,
            "core": Provide(lambda: core, use_cache=True, sync_to_thread=False),
            "quotas": Provide(lambda: core.quotas, use_cache=True, sync_to_thread=False),
            # Where /reg is mounted, for the Location of a write's 201.
            "api_base": Provide(lambda: api_base, use_cache=True, sync_to_thread=False),
            "event_source": Provide(lambda: event_source, use_cache=True, sync_to_thread=False),
        },
        exception_handlers=oci.exception_handlers(handlers),
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="cloudimg",
            version=__version__,
            path="/docs",
            # /docs/openapi.json: 3.0.3, as qlkube's openapi-to-graphql reads it (and the
            # old server served); Litestar's own 3.1.0 beside it (docs/api.md).
            render_plugins=[OpenAPI30JsonPlugin(), JsonRenderPlugin(path=OPENAPI_31_PATH)],
        ),
        request_max_body_size=None,
        # Logging is set up by `cloudimg serve` (cloudimg.logs), also in worker processes,
        # which build the app after it: Litestar must not replace the root handlers.
        logging_config=None,
    )
    # Outside routing and exception handling, so the access log and the request
    # metrics see every request, 404s and errors included.
    app.asgi_handler = RequestObserver(HeaderLimit(Linger(app.asgi_handler)), metrics)
    return app


async def _restore_trashed(catalog: Catalog) -> None:
    """Put back blob files a crash left in trash while their tags stayed (before serving).

    Each file put back is logged. A failure here is logged, not fatal: downloads put
    such a file back on demand too.
    """
    try:
        await catalog.maintenance.restore_trashed()
    except (CloudimgError, OSError) as exc:
        log.warning("could not check trash/ for blob files a crash left there: %s", exc)


async def _deliver(catalog: Catalog, config: EventsConfig, source: str) -> None:
    """Send the change events to the configured endpoints while this process holds the
    catalog's lease (docs/events.md); none configured: nothing runs."""
    if not config.endpoints:
        return
    # Imported here: its HTTP client costs every start ~0.15 s of CPU, and only
    # configured endpoints need it.
    from cloudimg.core.delivery import Deliverer

    await Deliverer(catalog.events, config, source).run()


def create_app_from_env() -> Litestar:
    """Build the app in a worker process from the settings its parent serialised.

    Granian's multi-process server imports this factory by name in each worker.
    """
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start workers with `cloudimg serve`")
    settings = settings_from_json(text)
    return create_app(settings, load_registry_auth(settings))
