"""Name rules, digest parsing and settings helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudimg.blobstore.s3 import S3Location
from cloudimg.config import Settings, SettingsError, parse_listener_addr
from cloudimg.digest import parse_digest
from cloudimg.errors import InvalidArgumentError
from cloudimg.names import validate_image_name, validate_repo_name, validate_tag_name
from cloudimg.registry import blob_location


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


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://images", "images", ""),
        ("s3://images/", "images", ""),
        ("s3://vm.images-1/cloudimg", "vm.images-1", "cloudimg/"),
        ("s3://vm-images/cloudimg/", "vm-images", "cloudimg/"),
        ("S3://vm-images//a/b", "vm-images", "a/b/"),
    ],
)
def test_blob_store_url_normalised(url: str, bucket: str, prefix: str) -> None:
    assert blob_location(Settings(blob_store=url)) == S3Location(bucket, prefix)
    assert blob_location(Settings(blob_store="")) is None  # an unset chart value
    found = blob_location(Settings(blob_store=url, s3_endpoint="", s3_path_style=True))
    assert found == S3Location(bucket, prefix, path_style=True)


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"blob_store": "https://bucket"}, "blob_store"),
        ({"blob_store": "s3://"}, "blob_store"),
        ({"blob_store": "s3://Upper"}, "blob_store"),
        ({"blob_store": "s3://-leading"}, "blob_store"),
        ({"blob_store": "s3://a..b"}, "blob_store"),
        ({"blob_store": "s3://" + "a" * 64}, "blob_store"),
        ({"blob_store": "s3://10.0.0.1"}, "blob_store"),
        ({"blob_store": "s3://xn--bucket"}, "blob_store"),
        ({"blob_store": "s3://bucket:9000"}, "blob_store"),
        ({"blob_store": "s3://key:secret@bucket"}, "blob_store"),
        ({"blob_store": "s3://bucket/a/../b"}, "blob_store"),
        ({"blob_store": "s3://bucket/a b"}, "blob_store"),
        ({"blob_store": "s3://bucket?versionId=1"}, "blob_store"),
        ({"blob_store": "s3://bucket", "s3_endpoint": "minio:9000"}, "s3_endpoint"),
        ({"blob_store": "s3://bucket", "s3_endpoint": "http://key:secret@minio"}, "s3_endpoint"),
        ({"blob_store": "s3://bucket", "s3_endpoint": "http://minio/path"}, "s3_endpoint"),
    ],
)
def test_blob_store_settings_refused(settings: dict[str, str], setting: str) -> None:
    with pytest.raises(SettingsError) as refused:
        blob_location(Settings(**settings))
    assert refused.value.setting == setting
    assert "secret" not in str(refused.value)


def test_the_data_root_is_needed_unless_a_bucket_and_a_database_url() -> None:
    assert Settings().uses_data_root
    assert Settings(blob_store="s3://b").uses_data_root  # the SQLite catalog lives there
    assert not Settings(blob_store="s3://b", database_url="postgresql://db/c").uses_data_root
