"""A slice of a sorted listing: keyset pagination and a substring filter, applied in SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVarTuple

from sqlalchemy import Select, SQLColumnExpression, or_

__all__ = ["ALL", "SORTS", "Page", "Sort"]

Ts = TypeVarTuple("Ts")

Sort = Literal["name", "size", "updated"]
SORTS: tuple[Sort, ...] = ("name", "size", "updated")
"""The orders of the summary listings (``Catalog.summarize_repositories``): by name
(A to Z), by size (largest first) or by the last update (newest first)."""


@dataclass(frozen=True, slots=True)
class Page:
    """Which part of a listing sorted by name to read.

    Keyset pagination (``name > after``) rather than an offset, so page 1,000 of a
    large catalog costs what page 1 costs: one range scan of the name index.
    """

    after: str | None = None
    """Only names sorting after this one (the last name of the previous page)."""
    limit: int | None = None
    """At most this many rows; None: all."""
    contains: str = ""
    """Only rows whose name (or the extra column given to ``apply``) contains this
    text, case-insensitively; empty: every row."""
    sort: Sort = "name"
    """The order of a summary listing; ``apply`` always orders by name."""
    after_value: int | datetime | None = None
    """With ``sort`` ``size`` or ``updated``: that figure of the row ``after`` names.
    The keyset is then (figure, name): rows after it have a smaller figure, or the
    same figure and a name sorting after ``after``."""

    def matching(
        self,
        query: Select[*Ts],
        name: SQLColumnExpression[str],
        also: SQLColumnExpression[str] | None = None,
    ) -> Select[*Ts]:
        """``query`` filtered by ``contains`` (on ``name``, or on ``also``), nothing else."""
        if not self.contains:
            return query
        wanted = self.contains.lower()
        matches = name.contains(wanted, autoescape=True)
        if also is not None:
            matches = or_(matches, also.contains(wanted, autoescape=True))
        return query.where(matches)

    def apply(
        self,
        query: Select[*Ts],
        name: SQLColumnExpression[str],
        also: SQLColumnExpression[str] | None = None,
    ) -> Select[*Ts]:
        """``query`` filtered, ordered by ``name`` and limited as this page says.

        ``also``: a lower-cased text column that ``contains`` may match instead of the name.
        """
        query = self.matching(query, name, also)
        if self.after is not None:
            query = query.where(name > self.after)
        query = query.order_by(name)
        if self.limit is not None:
            query = query.limit(self.limit)
        return query


ALL = Page()
"""Every row, sorted by name (what the ``/reg`` listings return)."""
