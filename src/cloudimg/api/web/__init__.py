"""The web pages: server-rendered HTML views over the catalog, under ``<www-prefix>ui/``."""

from cloudimg.api.web.errors import with_page_errors
from cloudimg.api.web.pages import template_config, web_routes, web_ui_base

__all__ = ["template_config", "web_routes", "web_ui_base", "with_page_errors"]
