"""What the OCI slice gives the app to mount: its ``/v2`` router (handlers, error shape,
dependencies) and what the rest of the app shares with it.

Registry clients cannot use a path prefix: ``/v2`` sits at the root whatever
``--www-prefix`` says, with the spec's error shape and Basic challenges (the guards the
app passes in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Router
from litestar.di import Provide
from litestar.types import ExceptionHandlersMap, Guard

from cloudimg.config import Settings
from cloudimg.core import QuotaGate
from cloudimg.oci.digests import ContainerDisks
from cloudimg.oci.http.deletes import OciDeleteController
from cloudimg.oci.http.errors import oci_exception_handlers, with_unrouted_oci
from cloudimg.oci.http.face import OciFace
from cloudimg.oci.http.pulls import OciPullController
from cloudimg.oci.http.pushes import OciPushController, chunk_of
from cloudimg.oci.keep import KeepContext
from cloudimg.registry import Registry

__all__ = ["OciRoutes", "oci_routes"]


def _provide(value: Any) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


@dataclass(frozen=True)
class OciRoutes:
    """The slice as the app mounts it."""

    router: Router
    dependencies: dict[str, Provide]
    """App-wide: the OCI store (``oci``) and the containerDisks (``disks``), which
    ``/reg`` and the web pages read too."""
    disks: ContainerDisks
    """The background hasher of containerDisk layers, for the app's lifespan to run
    (``run``) and stop (``close``)."""

    def exception_handlers(self, handlers: ExceptionHandlersMap) -> ExceptionHandlersMap:
        """The app's handlers, with routing failures under ``/v2`` in the spec's shape."""
        return with_unrouted_oci(handlers)


def oci_routes(
    registry: Registry,
    settings: Settings,
    guards: list[Guard],
    quotas: QuotaGate | None = None,
) -> OciRoutes:
    """The ``/v2`` face over ``registry``; every tag write that commits wakes its
    containerDisk hasher (a hook of the catalog: ``cloudimg.catalog.hooks``); upload
    sessions are held to ``quotas`` (the core's, which the manifest's commit checks
    again in the catalog)."""
    disks = ContainerDisks(registry.oci, registry.blobs)
    registry.catalog.hooks.tag_written.append(disks.waker())
    keeping = KeepContext(
        registry.catalog, registry.oci, registry.blobs, settings, settings.inspection_policy
    )
    router = Router(
        path="/",
        route_handlers=[
            OciPullController,
            OciPushController,
            OciDeleteController,
        ],
        guards=guards,
        exception_handlers=oci_exception_handlers,
        dependencies={
            "face": _provide(OciFace.over(keeping, disks, quotas)),
            "chunk": Provide(chunk_of, sync_to_thread=False),
        },
        include_in_schema=False,
    )
    dependencies = {"oci": _provide(registry.oci), "disks": _provide(disks)}
    return OciRoutes(router, dependencies, disks)
