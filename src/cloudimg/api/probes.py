"""Liveness and readiness probes, never behind a prefix: ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import os
from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import SkipValidation

from cloudimg.api.errors import RETRY_AFTER_SECS, error_response
from cloudimg.api.openapi import error_responses
from cloudimg.blobstore import BlobStoreUnavailableError, OpenedBlobStore
from cloudimg.catalog import Catalog
from cloudimg.errors import CloudimgError

__all__ = ["HealthController", "ReadinessController"]

Envelope = dict[str, Any]


def _ok(data: Any) -> Envelope:
    return {"success": True, "data": data}


class HealthController(Controller):
    """Liveness, never behind a prefix."""

    path = "/healthz"

    @get("/", operation_id="ReadinessProbe", summary="Liveness probe")
    async def healthz(self, state: State) -> Envelope:
        return _ok(None)


class ReadinessController(Controller):
    """Readiness, never behind a prefix: the catalog answers and the blob store (the data
    root's files, or a bucket) takes new blobs."""

    path = "/readyz"

    @get(
        "/",
        operation_id="GetReadiness",
        summary="Readiness probe: the catalog can begin a write and the blob store takes blobs",
        responses=error_responses(),
    )
    async def readyz(
        self,
        catalog: NamedDependency[Catalog],
        blobs: NamedDependency[SkipValidation[OpenedBlobStore]],
    ) -> Response[Any]:
        problems: dict[str, str] = {}
        try:
            await catalog.reads.check_writable()
        except Exception as exc:  # readiness reports what is wrong, it never fails
            reason = (
                exc.context.get("reason")
                if isinstance(exc, CloudimgError) and exc.context
                else None
            )
            problems["catalog"] = str(reason or type(exc).__name__)
        # The file system store is its data root (the name probes have always read);
        # an object store is reported as the blob store.
        store = "data_root" if blobs.directories else "blob_store"
        free: int | None = None
        try:
            await blobs.probe_writable()
            free = await blobs.free_space()
        except OSError as exc:
            # An object store's reason is its own line (never an address or a secret); a
            # file's is its errno's text, never its path.
            own = isinstance(exc, BlobStoreUnavailableError) and exc.strerror
            problems[store] = (
                own or (os.strerror(exc.errno) if exc.errno else None) or type(exc).__name__
            )
        if problems:
            reasons = "; ".join(f"{what}: {why}" for what, why in problems.items())
            return error_response(
                503,
                "UNAVAILABLE",
                f"not ready: {reasons}",
                problems,
                {"Retry-After": str(RETRY_AFTER_SECS)},
            )
        return Response(_ok({"catalog": "ok", store: "ok", "free_bytes": free}))
