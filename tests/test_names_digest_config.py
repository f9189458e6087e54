"""Name rules, digest parsing and settings helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudimg.config import Settings, parse_listener_addr
from cloudimg.digest import parse_digest
from cloudimg.errors import InvalidArgumentError
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name


@pytest.mark.parametrize("name", ["abc", "a-b", "r2d2", "a" * 63, "0ab"])
def test_valid_repo_names(name: str) -> None:
    assert validate_repo_name(name) == name
    assert validate_image_name(name) == name


@pytest.mark.parametrize(
    "name", ["ab", "a" * 64, "-ab", "ab-", "Abc", "a_b", "a.b", "a/b", "..", "ab\x00"]
)
def test_invalid_repo_names(name: str) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_repo_name(name)


@pytest.mark.parametrize("name", ["22.04", "v1", "latest", "a_b-c.d", "x" * 128])
def test_valid_tags_include_dots(name: str) -> None:
    assert validate_tag_name(name) == name


@pytest.mark.parametrize(
    "name", ["v", "x" * 129, ".v1", "v1.", "V1", "blake3:ab", "a b", "..", "a/b"]
)
def test_invalid_tags(name: str) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_tag_name(name)


def test_parse_digest_round_trips() -> None:
    text = "sha256:" + "ab" * 32
    assert str(parse_digest(text)) == text
    assert parse_digest("blake3:" + "0" * 64).algorithm == "blake3"


@pytest.mark.parametrize(
    "text", ["md5:" + "a" * 64, "blake3:" + "A" * 64, "blake3:abc", "sha256", "sha256:" + "g" * 64]
)
def test_parse_digest_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="digest"):
        parse_digest(text)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("localhost:8080", ("localhost", 8080)),
        (":8080", ("", 8080)),
        ("[::1]:80", ("::1", 80)),
        ("[::]:0", ("::", 0)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
    ],
)
def test_listener_addr_like_go(addr: str, expected: tuple[str, int]) -> None:
    assert parse_listener_addr(addr) == expected


@pytest.mark.parametrize(
    "addr", ["localhost", "host:http", "h:70000", "::1:80", "[localhost]:80", "[]:80", "h:٣"]
)
def test_bad_listener_addr(addr: str) -> None:
    with pytest.raises(ValueError, match="listener address"):
        parse_listener_addr(addr)


@pytest.mark.parametrize(
    ("www", "repo", "base"),
    [("/", "reg", "/reg"), ("", "reg", "/reg"), ("/mirror/", "/images/", "/mirror/images")],
)
def test_api_base(www: str, repo: str, base: str) -> None:
    assert Settings(www_prefix=www, repo_prefix=repo).api_base == base


def test_default_database_is_sqlite_in_data_root(tmp_path: Path) -> None:
    url = Settings(data_root=tmp_path).resolved_database_url
    assert url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/catalog.sqlite3"
    assert Settings(database_url="postgresql+asyncpg://x/y").resolved_database_url.startswith(
        "postgresql"
    )
