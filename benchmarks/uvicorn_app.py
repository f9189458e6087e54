"""Factory for running the cloudimg app under uvicorn, for ``bench.py --compare-uvicorn``.

``cloudimg serve`` runs Granian in-process; to compare ASGI servers on the same app,
the benchmark starts::

    uvicorn --factory --app-dir benchmarks uvicorn_app:app_factory

with ``CLOUDIMG_DATA_ROOT`` naming the data root. The factory migrates the catalog
first (in a worker thread: uvicorn calls factories inside its event loop), as
``cloudimg serve`` does before it starts Granian.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from litestar import Litestar

from cloudimg.api import create_app
from cloudimg.api.auth import load_registry_auth
from cloudimg.catalog import upgrade_database
from cloudimg.config import Settings

__all__ = ["app_factory"]


def app_factory() -> Litestar:
    """The cloudimg app on ``$CLOUDIMG_DATA_ROOT`` (and ``$CLOUDIMG_DATABASE_URL`` if set)."""
    data_root = Path(os.environ["CLOUDIMG_DATA_ROOT"])
    settings = Settings(data_root=data_root, database_url=os.environ.get("CLOUDIMG_DATABASE_URL"))
    data_root.mkdir(parents=True, exist_ok=True)
    # uvicorn calls the factory inside its running event loop, and the Alembic environment
    # runs a loop of its own: migrate from a thread, as cloudimg serve does before its loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(upgrade_database, settings.resolved_database_url).result()
    return create_app(settings, load_registry_auth(settings))
