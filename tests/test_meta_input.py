"""The ``meta`` part of an upload: any bytes give 201 or a 400, never a 5xx (issue 8, section 7).

The parser is fuzzed directly with Hypothesis (arbitrary bytes, JSON of any shape in
any Unicode encoding, deep nesting, long numbers), then the cases that used to give 500
and a smaller fuzz run go to a real ``cloudimg serve`` on each catalog backend, where
accepted metadata must also come back exactly from ``GET .../meta``.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings

from cloudimg.api.reg.uploads import parse_meta
from cloudimg.errors import InvalidArgumentError
from tests.conftest import RunningServer
from tests.invariants import assert_invariants, wait_for_no_staging
from tests.support import MULTIPART, Part, assert_error, img_part, multipart_body
from tests.test_http_upload import state_of

# -- the parser itself --------------------------------------------------------------------


def outcome(raw: bytes) -> dict[str, str] | None:
    """What ``parse_meta`` makes of ``raw``: the metadata, or None for a 400.

    Any other exception fails the test (it would be a 500), and so does a refusal whose
    message or context cannot be sent as JSON (it would fail while being answered).
    """
    try:
        meta = parse_meta(raw)
    except InvalidArgumentError as exc:
        msgspec.json.encode({"error": exc.message, "context": exc.context})
        return None
    assert isinstance(meta, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    msgspec.json.encode(meta)  # what GET .../meta will send back
    return meta


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
encodings = st.sampled_from(
    ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"]
)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=2048))
@example(b"[" * 60_000)
@example(b'{"a":' * 10_000)
@example(b'{"a":' + b"1" * 5000 + b"}")
@example(b'{"a":' + b"1" * 5000 + b".5e99999}")
@example(b'{"a":NaN,"b":-Infinity}')
@example(b'{"\\ud800":"x","\\ud800":"y"}')
def test_any_bytes_are_metadata_or_a_400(raw: bytes) -> None:
    outcome(raw)


@settings(max_examples=1000, deadline=None)
@given(json_values, encodings, st.booleans())
def test_json_of_any_shape_and_encoding_is_metadata_or_a_400(
    value: Any, encoding: str, ascii_only: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        return  # lone surrogates in a text() cannot be put in bytes by this encoder
    meta = outcome(raw)
    if encoding != "utf-8":
        # A BOM, or NUL bytes around every ASCII character (UTF-16/32 without a BOM).
        assert meta is None
        return
    is_flat_text = isinstance(value, dict) and all(
        isinstance(v, str) and _is_text(k) and _is_text(v) for k, v in value.items()
    )
    assert (meta is not None) == is_flat_text
    if meta is not None:
        assert meta == value


TEXT = st.text(st.characters(exclude_categories=("Cs",)))
"""Text without surrogates: what a UTF-8 answer can carry."""


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, TEXT, max_size=8), st.booleans())
def test_flat_objects_of_strings_round_trip(meta: dict[str, str], ascii_only: bool) -> None:
    assert parse_meta(json.dumps(meta, ensure_ascii=ascii_only).encode()) == meta


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=300_000), st.sampled_from(["[", '{"a":', '{"a":[']))
def test_nesting_of_any_depth_is_a_400(depth: int, opener: str) -> None:
    assert outcome((opener * depth).encode()) is None


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=100_000), st.sampled_from(["", "-", "0.", "1e"]))
def test_numbers_of_any_length_are_a_400(digits: int, prefix: str) -> None:
    """Never converted: Python refuses to turn more than 4,300 digits into an int."""
    assert outcome(b'{"a":' + prefix.encode() + b"7" * digits + b"}") is None


@pytest.mark.parametrize(
    ("raw", "wanted"),
    [
        (b"[" * 60_000, "nests too deeply"),
        (b'{"a":' * 10_000, "nests too deeply"),
        (b'{"a":' + b"9" * 5000 + b"}", "must be strings"),
        ('{"a":"b"}'.encode("utf-16"), "not UTF-8"),
        ('{"a":"b"}'.encode("utf-32"), "not UTF-8"),
        ('{"a":"b"}'.encode("utf-16-le"), "not valid JSON"),
        ('{"a":"b"}'.encode("utf-8-sig"), "byte order mark"),
        (b'{"a":"\xc3"}', "not UTF-8"),
    ],
    ids=[
        "60000-brackets",
        "10000-objects",
        "5000-digits",
        "utf-16-bom",
        "utf-32-bom",
        "utf-16-no-bom",
        "utf-8-bom",
        "cut-utf-8",
    ],
)
def test_each_refusal_says_why(raw: bytes, wanted: str) -> None:
    with pytest.raises(InvalidArgumentError, match=wanted):
        parse_meta(raw)


# -- against a real server, on each catalog backend ---------------------------------------


def post_meta(server: RunningServer, path: str, raw_meta: bytes) -> httpx.Response:
    body = multipart_body([Part("meta", raw_meta), img_part(b"image for " + path.encode())])
    with server.client() as http:
        return http.post(path, content=body, headers={"content-type": MULTIPART})


@pytest.mark.parametrize(
    "raw_meta",
    [
        b"[" * 60_000,
        b'{"a":' * 10_000,
        b'{"a":' + b"1" * 5000 + b"}",
        '{"os":"ubuntu"}'.encode("utf-16"),
        '{"os":"ubuntu"}'.encode("utf-16-le"),
        '{"os":"ubuntu"}'.encode("utf-8-sig"),
    ],
    ids=["60000-brackets", "10000-objects", "5000-digits", "utf-16-bom", "utf-16", "utf-8-bom"],
)
def test_meta_that_gave_500_or_was_misread_is_a_400(server: RunningServer, raw_meta: bytes) -> None:
    with server.client() as http:
        before = state_of(server, http)
    response = post_meta(server, f"/reg/m-{secrets.token_hex(4)}/img/v1", raw_meta)
    assert_error(response, 400, "INVALID_ARGUMENT")
    with server.client() as http:
        assert state_of(server, http) == before
    assert server.staging_files() == []


def test_edge_metadata_round_trips(server: RunningServer) -> None:
    """Valid text that databases handle specially: NUL, astral characters, empty keys."""
    meta = {"nul": "a\u0000b", "": "empty key", "astral": "\U0001f600", "bs": '\\"', "x": ""}
    path = f"/reg/m-{secrets.token_hex(4)}/img/v1"
    assert post_meta(server, path, json.dumps(meta).encode()).status_code == 201
    with server.client() as http:
        assert http.get(f"{path}/meta").json()["data"] == meta


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.binary(max_size=512) | json_values.map(lambda v: json.dumps(v).encode()))
def test_no_meta_gives_a_5xx_from_a_real_server(server: RunningServer, raw_meta: bytes) -> None:
    path = f"/reg/m-{secrets.token_hex(4)}/img/v1"
    response = post_meta(server, path, raw_meta)
    assert response.status_code in (201, 400), response.text
    if response.status_code == 201:
        with server.client() as http:
            assert http.get(f"{path}/meta").json()["data"] == json.loads(raw_meta)
    else:
        assert_error(response, 400, "INVALID_ARGUMENT")


def test_the_store_holds_after_the_fuzzing(server: RunningServer) -> None:
    """Runs after the cases above on the same server: nothing left over, nothing broken."""
    assert wait_for_no_staging(server) == []
    assert_invariants(server)
