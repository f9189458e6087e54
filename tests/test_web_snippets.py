"""The "use it" snippets, the storage chart's geometry and the address checks, as pure
functions.

The HTTP tests (``tests/test_web.py``) take the same snippets from real pages and run
them; these cover the corners a page of a test server does not reach.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime

import pytest
import yaml

from cloudimg.api.web.chart import WIDTH, storage_chart
from cloudimg.api.web.snippets import FORMAT_PLACEHOLDER, datavolume_name, rollback, use_it
from cloudimg.catalog import GcRecord, StorageTotals, TagInfo
from cloudimg.config import Settings, SettingsError, is_host_port, parse_public_url

GIB = 1024**3
SHA = "ab" * 32
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def info(**changes: object) -> TagInfo:
    fields: dict[str, object] = {
        "repo": "images",
        "image": "ubuntu",
        "tag": "22.04",
        "digest": "cd" * 32,
        "sha256": SHA,
        "size": 700 * 1024**2,
        "meta": {},
        "created": NOW,
        "updated": NOW,
    }
    return TagInfo(**{**fields, **changes})  # type: ignore[arg-type]


def test_datavolume_names_are_dns_labels() -> None:
    assert datavolume_name("ubuntu", "22.04") == "ubuntu-22-04"
    assert datavolume_name("win", "v1_2.3--x") == "win-v1-2-3-x"
    long = datavolume_name("a" * 60 + "-b", "c" * 128)
    assert len(long) <= 63
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", long)


def test_a_known_format_goes_after_f_and_anything_else_is_a_placeholder() -> None:
    panel = use_it(info(format="qcow2", virtual_size=20 * GIB + 1), "http://r/reg")
    assert panel.format_known
    assert shlex.split(panel.qemu_img_convert) == [
        *("qemu-img", "convert", "-f", "qcow2", "-m", "1", "-O", "raw"),
        f"http://r/reg/images/ubuntu/sha256:{SHA}",
        "ubuntu-22.04.raw",
    ]
    volume = yaml.safe_load(panel.datavolume)
    assert volume["spec"]["storage"]["resources"]["requests"]["storage"] == "21Gi"
    for odd in (None, "qcow2 -o x", "QCOW2", "", "a" * 17):
        panel = use_it(info(format=odd), "http://r/reg")
        assert not panel.format_known
        assert shlex.split(panel.qemu_img_convert)[3] == FORMAT_PLACEHOLDER


def test_an_odd_host_stays_one_yaml_string_and_one_shell_word() -> None:
    api = "http://evil\"host' $(x)/reg"
    panel = use_it(info(), api)
    url = f"{api}/images/ubuntu/sha256:{SHA}"
    assert yaml.safe_load(panel.datavolume)["spec"]["source"]["http"]["url"] == url
    assert shlex.split(panel.qemu_img_info) == ["qemu-img", "info", url]


def test_read_auth_adds_a_secret_ref_hint_and_unknown_size_a_note() -> None:
    text = use_it(info(), "http://r/reg", read_auth=True).datavolume
    assert "secretRef" in text
    assert "not inspected" in text
    volume = yaml.safe_load(text)
    assert volume["spec"]["storage"]["resources"]["requests"]["storage"] == "1Gi"


def test_the_chart_puts_both_bars_on_one_scale() -> None:
    totals = StorageTotals(
        blobs=4,
        stored_bytes=900,
        tags=5,
        logical_bytes=1500,
        referenced_bytes=800,
        history_only_blobs=1,
        history_only_bytes=60,
        oci_kept_blobs=2,
        oci_kept_bytes=25,
    )
    chart = storage_chart(totals, GcRecord(runs_total=1, last_run_timestamp=NOW.timestamp()))
    logical, stored = chart.bars
    assert [s.value for s in logical.segments] == [800, 700]
    # tags, history only, kept /v2 layers and configs, nothing (gc frees it)
    assert [s.value for s in stored.segments] == [800, 60, 25, 15]
    assert [s.x for s in stored.segments] == [0, 320, 344, 354]
    assert sum(s.width for s in logical.segments) == WIDTH  # the longer bar fills the width
    assert sum(s.width for s in stored.segments) == WIDTH * 900 / 1500
    assert chart.last_gc == NOW
    assert storage_chart(StorageTotals(0, 0, 0, 0, 0), None).last_gc is None


@pytest.mark.parametrize(
    "authority",
    [
        "registry.example",
        "registry.example:8443",
        "registry.example.:80",
        "localhost",
        "reg_1.lab",
        "10.0.0.5:8080",
        "[::1]",
        "[::1]:8080",
        "[2001:db8::7]:65535",
        "A-1.B-2",
    ],
)
def test_a_host_and_port_that_may_go_into_a_command(authority: str) -> None:
    assert is_host_port(authority)


@pytest.mark.parametrize(
    "authority",
    [
        "",
        "evil.example$(id)",  # sub-delims: RFC 3986 allows them in a reg-name, a shell runs them
        "evil.example;id",
        "evil.example&id",
        "'quoted'",
        "a b",
        "evil%2eexample",
        "user@host",
        "host/path",
        "host?x",
        "host#x",
        "-leading.example",
        "trailing-.example",
        "a..b",
        "x" * 64 + ".example",  # a label of 64
        "host:",
        "host:http",
        "host:65536",
        "host:123456",
        "host:80:80",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[fe80::1%eth0]",
        "[fe80::1%25eth0]",
        "[v1.fe80::1]",
        "[10.0.0.1]",
        "::1",
    ],
)
def test_anything_else_is_not_a_host_and_port(authority: str) -> None:
    assert not is_host_port(authority)


def test_a_public_url_is_an_origin() -> None:
    assert parse_public_url("https://registry.example.com") == "https://registry.example.com"
    assert parse_public_url("HTTP://[::1]:8080/") == "http://[::1]:8080"
    for bad in (
        "registry.example.com",
        "ftp://registry.example.com",
        "https://registry.example.com/images",
        "https://registry.example.com/?x=1",
        "https://registry.example.com#top",
        "https://u:p@registry.example.com",
        "https://registry.example.com$(id)",
        "https://",
    ):
        with pytest.raises(ValueError, match=r"URL|credentials|path|host"):
            parse_public_url(bad)
    with pytest.raises(SettingsError) as refused:
        Settings(public_url="https://x/y").check_web()
    assert refused.value.setting == "public_url"
    Settings(public_url="https://x").check_web()


def test_the_rollback_command_names_the_history_digest_and_the_tag() -> None:
    command = rollback(info(), "http://r:8080/reg", "ef" * 32)
    assert shlex.split(command) == [
        *("cloudimg", "tag", "--server", "http://r:8080/reg"),
        f"images/ubuntu@blake3:{'ef' * 32}",
        "images/ubuntu:22.04",
    ]
