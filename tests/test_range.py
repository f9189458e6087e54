"""``parse_range``: the single byte range a Range header selects (RFC 9110 section 14)."""

from __future__ import annotations

import pytest

from cloudimg.api.rfc9110 import ByteRange, Unsatisfiable, parse_range

SIZE = 1000


def test_no_header_selects_everything() -> None:
    assert parse_range(None, SIZE) is None


def test_first_and_last() -> None:
    assert parse_range("bytes=10-19", SIZE) == ByteRange(10, 19)


def test_single_byte() -> None:
    assert parse_range("bytes=0-0", SIZE) == ByteRange(0, 0)


def test_length_counts_both_ends() -> None:
    assert ByteRange(10, 19).length == 10


def test_open_ended_runs_to_the_end() -> None:
    assert parse_range("bytes=990-", SIZE) == ByteRange(990, 999)


def test_suffix_is_the_last_n_bytes() -> None:
    assert parse_range("bytes=-10", SIZE) == ByteRange(990, 999)


def test_suffix_longer_than_the_representation_is_all_of_it() -> None:
    assert parse_range("bytes=-5000", SIZE) == ByteRange(0, 999)


def test_last_beyond_the_end_is_clamped() -> None:
    assert parse_range("bytes=500-5000", SIZE) == ByteRange(500, 999)


def test_last_byte_only() -> None:
    assert parse_range("bytes=999-999", SIZE) == ByteRange(999, 999)


def test_huge_last_position_is_clamped_not_an_error() -> None:
    # Python's int() refuses strings of more than 4300 digits.
    assert parse_range("bytes=0-" + "9" * 5000, SIZE) == ByteRange(0, 999)


def test_huge_suffix_is_all_of_it() -> None:
    assert parse_range("bytes=-" + "9" * 5000, SIZE) == ByteRange(0, 999)


def test_leading_zeros_are_allowed() -> None:
    assert parse_range("bytes=0010-0019", SIZE) == ByteRange(10, 19)


def test_unit_is_case_insensitive() -> None:
    assert parse_range("Bytes=10-19", SIZE) == ByteRange(10, 19)


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_range("  bytes=10-19 ", SIZE) == ByteRange(10, 19)


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1000", "bytes=5000-6000"])
def test_first_at_or_beyond_the_end_is_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, SIZE)


def test_huge_first_position_is_unsatisfiable() -> None:
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=" + "9" * 5000 + "-", SIZE)


def test_zero_length_suffix_is_unsatisfiable() -> None:
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=-0", SIZE)


@pytest.mark.parametrize(
    "header",
    ["bytes=0-1,5-6", "bytes=0-1, 5-6", "bytes=-1,0-0", "bytes=0-0,0-0"],
    ids=["two", "two-with-space", "suffix-and-range", "same-twice"],
)
def test_multiple_ranges_are_ignored(header: str) -> None:
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes=1-a",
        "bytes=-1-2",
        "bytes=+1-2",
        "bytes=1.5-2",
        "bytes = 0-1",
        "items=0-1",
        "0-1",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits are no HTTP digits
    ],
)
def test_malformed_header_is_ignored(header: str) -> None:
    assert parse_range(header, SIZE) is None


def test_last_before_first_is_ignored() -> None:
    assert parse_range("bytes=20-10", SIZE) is None


@pytest.mark.parametrize("header", ["bytes=0-", "bytes=0-0", "bytes=5-10"])
def test_any_first_position_of_an_empty_representation_is_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 0)


def test_suffix_of_an_empty_representation_selects_everything() -> None:
    # Satisfiable (RFC 9110 section 14.1.1), and a 206 cannot carry zero bytes: send all.
    assert parse_range("bytes=-10", 0) is None


def test_zero_length_suffix_of_an_empty_representation_is_unsatisfiable() -> None:
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=-0", 0)


def test_one_byte_representation_suffix() -> None:
    assert parse_range("bytes=-1", 1) == ByteRange(0, 0)
