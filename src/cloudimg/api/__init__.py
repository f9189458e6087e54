"""The HTTP API: Litestar controllers rendering the /reg endpoints over the catalog."""

from cloudimg.api.app import create_app

__all__ = ["create_app"]
