"""Liveness and readiness probes, never behind a prefix: ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import os
from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.params import SkipValidation

from cloudimg.api.errors import error_response
from cloudimg.api.openapi import error_responses
from cloudimg.blobstore import BlobStore
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
    """Readiness, never behind a prefix: the catalog answers and the data root takes files."""

    path = "/readyz"

    @get(
        "/",
        operation_id="GetReadiness",
        summary="Readiness probe: the catalog can begin a write and the data root is writable",
        responses=error_responses(),
    )
    async def readyz(self, catalog: Catalog, blobs: SkipValidation[BlobStore]) -> Response[Any]:
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
        free: int | None = None
        try:
            await blobs.probe_writable()
            free = await blobs.free_space()
        except OSError as exc:
            problems["data_root"] = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        if problems:
            reasons = "; ".join(f"{what}: {why}" for what, why in problems.items())
            return error_response(503, "UNAVAILABLE", f"not ready: {reasons}", problems)
        return Response(_ok({"catalog": "ok", "data_root": "ok", "free_bytes": free}))
