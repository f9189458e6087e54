"""The "use it" snippets and the storage chart's geometry, as pure functions.

The HTTP tests (``tests/test_web.py``) take the same snippets from real pages and run
them; these cover the corners a page of a test server does not reach.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime

import yaml

from cloudimg.api.web.chart import WIDTH, storage_chart
from cloudimg.api.web.snippets import FORMAT_PLACEHOLDER, datavolume_name, use_it
from cloudimg.catalog import StorageTotals, TagInfo
from cloudimg.gc_record import GcRecord

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
