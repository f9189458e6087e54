"""Moved to :mod:`cloudimg.core.ingest`; kept only for importers not yet moved there.

Remove once nothing imports ``cloudimg.ingest`` (the ``/v2`` face's kept-manifest commit).
"""

from cloudimg.core.ingest import TagNames, commit_staged

__all__ = ["TagNames", "commit_staged"]
