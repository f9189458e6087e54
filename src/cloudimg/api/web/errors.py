"""Errors on the pages' paths as HTML pages; the API keeps its JSON errors.

The app's one error mapping (``cloudimg.api.errors``) decides the status, the code, the
message and the headers that pass (``WWW-Authenticate``, ``Allow``) for every error;
on a page's path (``<www-prefix>``, ``<www-prefix>ui`` and below, whether a route took
the request or none did) that answer is rendered as an HTML page with the same status
and headers, and the pages' own headers (``PAGE_HEADERS``). Everything else (``/reg``,
``/v2``, ``/metrics``, ...) gets the JSON answer unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.types import ExceptionHandlersMap

from cloudimg.api.web.pages import PAGE_HEADERS, web_context, web_ui_base
from cloudimg.config import Settings, normalize_prefix

__all__ = ["with_page_errors"]

log = logging.getLogger(__name__)

_PASSED = ("www-authenticate", "allow")
_TEMPLATE = "error.html"

Handler = Callable[[Request[Any, Any, Any], Any], Response[Any]]


def with_page_errors(handlers: ExceptionHandlersMap, settings: Settings) -> ExceptionHandlersMap:
    """``handlers``, each answering on the pages' paths with an HTML error page."""
    ui = web_ui_base(settings)
    home = normalize_prefix(settings.www_prefix)

    def is_page(path: str) -> bool:
        return path in (home, ui) or path.startswith(ui + "/")

    def html(handler: Handler) -> Handler:
        def handle(request: Request[Any, Any, Any], exc: Any) -> Response[Any]:
            answer = handler(request, exc)
            if not is_page(request.scope["path"]):
                return answer
            return _error_page(request, answer, settings)

        return handle

    return {kind: html(handler) for kind, handler in handlers.items()}


def _error_page(
    request: Request[Any, Any, Any], answer: Response[Any], settings: Settings
) -> Response[Any]:
    """``answer`` (the JSON error) as an HTML page; ``answer`` itself if it cannot be drawn."""
    body = answer.content if isinstance(answer.content, dict) else {}
    status = answer.status_code or 500
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    context = web_context(
        settings,
        status=status,
        phrase=phrase,
        code=str(body.get("status", "")),
        message=str(body.get("error", "")),
        details=body.get("context") if isinstance(body.get("context"), dict) else {},
        path=request.scope["path"],
    )
    engine = request.app.template_engine
    try:
        if engine is None:
            raise RuntimeError("the pages' templates are not configured")
        page = engine.get_template(_TEMPLATE).render(**context)
    except Exception:  # an error page must not fail: the JSON answer is still right
        log.exception("could not draw the error page of %s", request.scope["path"])
        return answer
    headers = {k: v for k, v in answer.headers.items() if k.lower() in _PASSED}
    return Response(
        page,
        status_code=status,
        media_type=MediaType.HTML,
        headers={**PAGE_HEADERS, **headers},
    )
