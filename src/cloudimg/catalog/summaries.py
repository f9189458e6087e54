"""The summary listings of the web pages: repositories and images with their figures.

Each page of a listing is one query: the rows of the page with their counts, the bytes
their tags add up to and their last update, aggregated over the tags in the database.
Sorted by name, the page's rows are picked first (a range scan of the name index, as
``Page.apply`` does) and only they are aggregated; sorted by size or by last update,
every row's figure is needed to order them, so all are aggregated and the keyset is
(figure, name).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, distinct, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.selectable import Subquery

from cloudimg.catalog.models import Blob, Image, Repository, Tag
from cloudimg.catalog.paging import ALL, Page
from cloudimg.catalog.reads import _repository_id
from cloudimg.catalog.records import ImageDetails, RepositoryDetails
from cloudimg.catalog.transaction import CatalogBase

__all__ = ["CatalogSummaries"]


class CatalogSummaries(CatalogBase):
    """Repositories and images with their figures, a page at a time (the web pages' lists)."""

    async def summarize_repositories(self, page: Page = ALL) -> list[RepositoryDetails]:
        """The repositories ``page`` picks, with their numbers of images and tags, the
        bytes their tags add up to and their last update, in ``page.sort``'s order."""
        parents = select(Repository.id, Repository.name, Repository.created_at)

        def query(session: Session) -> list[RepositoryDetails]:
            chosen = _chosen(page, parents, Repository.name)
            joined = chosen.outerjoin(Image, Image.repository_id == chosen.c.id).outerjoin(
                Tag, Tag.image_id == Image.id
            )
            images = func.count(distinct(Image.id))
            summary = _summary(page, chosen, joined, images)
            return [
                RepositoryDetails(name, int(images), int(tags), int(size), updated)
                for name, images, tags, size, updated in session.execute(summary)
            ]

        return await self._query(query)

    async def summarize_images(self, repo: str, page: Page = ALL) -> list[ImageDetails]:
        """The images of ``repo`` that ``page`` picks, with their numbers of tags, the
        bytes those add up to and their last update, in ``page.sort``'s order;
        ``NotFoundError`` if there is no such repository."""

        def query(session: Session) -> list[ImageDetails]:
            repo_id = _repository_id(session, repo)
            parents = select(Image.id, Image.name, Image.created_at).where(
                Image.repository_id == repo_id
            )
            chosen = _chosen(page, parents, Image.name)
            joined = chosen.outerjoin(Tag, Tag.image_id == chosen.c.id)
            return [
                ImageDetails(name, int(tags), int(size), updated)
                for name, tags, size, updated in session.execute(
                    _summary(page, chosen, joined, None)
                )
            ]

        return await self._query(query)


def _chosen(
    page: Page, parents: Select[int, str, datetime], name: InstrumentedAttribute[str]
) -> Subquery:
    """The candidate rows (id, name, created_at): the page itself when sorted by name,
    else every row the filter lets through."""
    if page.sort == "name":
        return page.apply(parents, name).subquery()
    return page.matching(parents, name).subquery()


def _summary(
    page: Page, chosen: Subquery, joined: Any, images: ColumnElement[int] | None
) -> Select[Any]:
    """The rows of ``chosen`` with their figures over ``joined`` (their tags), ordered
    and cut as ``page`` says."""
    joined = joined.outerjoin(Blob, Blob.digest == Tag.digest)
    size = func.coalesce(func.sum(Blob.size), 0)
    updated = func.coalesce(func.max(Tag.updated_at), chosen.c.created_at)
    columns: list[ColumnElement[Any]] = [chosen.c.name]
    if images is not None:
        columns.append(images)
    columns += [func.count(Tag.id), size, updated]
    summary = (
        select(*columns)
        .select_from(joined)
        .group_by(chosen.c.id, chosen.c.name, chosen.c.created_at)
    )
    if page.sort == "name":
        return summary.order_by(chosen.c.name)
    figure: ColumnElement[Any] = size if page.sort == "size" else updated
    if page.after is not None:
        if page.after_value is None:
            raise ValueError(f"a page sorted by {page.sort} starts after a figure and a name")
        summary = summary.having(
            or_(
                figure < page.after_value,
                and_(figure == page.after_value, chosen.c.name > page.after),
            )
        )
    summary = summary.order_by(figure.desc(), chosen.c.name)
    return summary if page.limit is None else summary.limit(page.limit)
