"""References on the command line: ``REPO/IMAGE:TAG``, ``REPO/IMAGE@blake3:<hex>``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from cloudimg.client.errors import UsageError
from cloudimg.digest import Digest, parse_digest
from cloudimg.errors import InvalidArgumentError
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name

__all__ = ["ImageRef", "parse_image_ref", "parse_listing_target"]


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image by tag or by digest; exactly one of ``tag`` and ``digest`` is set."""

    repo: str
    image: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def path(self) -> str:
        """The path under the API root: ``/repo/image/tag`` or ``/repo/image/blake3:<hex>``."""
        last = self.tag if self.tag is not None else str(self.digest)
        return f"/{self.repo}/{self.image}/{quote(last, safe=':')}"

    def __str__(self) -> str:
        if self.tag is not None:
            return f"{self.repo}/{self.image}:{self.tag}"
        return f"{self.repo}/{self.image}@{self.digest}"


def parse_image_ref(text: str, *, tag_only: bool = False) -> ImageRef:
    """``REPO/IMAGE:TAG`` or ``REPO/IMAGE@blake3:<hex>`` / ``@sha256:<hex>``.

    Raises:
        UsageError: not a reference, a name that breaks the server's rules, or a digest
            where ``tag_only`` wants a tag.
    """
    name, at, digest_text = text.partition("@")
    if at:
        if tag_only:
            raise UsageError(f"{text!r}: give a tag (REPO/IMAGE:TAG), not a digest")
        repo, image = _repo_image(name, text)
        try:
            return ImageRef(repo, image, digest=parse_digest(digest_text))
        except ValueError as exc:
            raise UsageError(f"{text!r}: {exc}") from None
    path, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        raise UsageError(f"{text!r} is not REPO/IMAGE:TAG or REPO/IMAGE@blake3:<hex>")
    repo, image = _repo_image(path, text)
    return ImageRef(repo, image, tag=_checked(validate_tag_name, tag, text))


def parse_listing_target(text: str | None) -> tuple[str | None, str | None]:
    """``ls``'s argument: nothing, ``REPO`` or ``REPO/IMAGE``."""
    if not text:
        return None, None
    repo, slash, image = text.strip("/").partition("/")
    if not slash:
        return _checked(validate_repo_name, repo, text), None
    return _repo_image(f"{repo}/{image}", text)


def _repo_image(text: str, whole: str) -> tuple[str, str]:
    repo, slash, image = text.partition("/")
    if not slash:
        raise UsageError(f"{whole!r} names no image: REPO/IMAGE:TAG or REPO/IMAGE@blake3:<hex>")
    return _checked(validate_repo_name, repo, whole), _checked(validate_image_name, image, whole)


def _checked(validate: Callable[[str], str], name: str, whole: str) -> str:
    try:
        return validate(name)
    except InvalidArgumentError as exc:
        raise UsageError(f"{whole!r}: {exc.message}") from None
