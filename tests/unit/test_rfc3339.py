"""`parse_rfc3339`, the rule of every occurred_at: a table of what it returns and refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.events import parse_rfc3339

ACCEPTED = [
    ("2025-01-30T10:30:00Z", datetime(2025, 1, 30, 10, 30, tzinfo=UTC)),
    ("2025-01-30t10:30:00z", datetime(2025, 1, 30, 10, 30, tzinfo=UTC)),
    ("2025-01-30 10:30:00Z", datetime(2025, 1, 30, 10, 30, tzinfo=UTC)),
    ("2025-01-30T10:30:00.5Z", datetime(2025, 1, 30, 10, 30, 0, 500_000, tzinfo=UTC)),
    ("2025-01-30T10:30:00.123456Z", datetime(2025, 1, 30, 10, 30, 0, 123_456, tzinfo=UTC)),
    # digits past the microsecond are cut, never rounded
    ("2025-01-30T10:30:00.1234569Z", datetime(2025, 1, 30, 10, 30, 0, 123_456, tzinfo=UTC)),
    ("2025-01-30T19:30:00.123456789+09:00", datetime(2025, 1, 30, 10, 30, 0, 123_456, tzinfo=UTC)),
    ("2025-01-30T05:00:00-05:30", datetime(2025, 1, 30, 10, 30, tzinfo=UTC)),
    ("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
    ("2999-12-31T00:00:00Z", datetime(2999, 12, 31, tzinfo=UTC)),
]

REFUSED = [
    "2025-01-30T10:30:00",  # no offset
    "2025-01-30",
    "2025-01-30T10:30Z",
    "2025-01-30T10:30:00.Z",
    "2025-01-30T10:30:00.1234567890Z",  # more than nine digits
    "2025-02-30T10:30:00Z",  # no such day
    "2025-01-30T24:30:00Z",
    "1969-12-31T23:59:59Z",
    "2999-12-31T00:00:01Z",
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC: overflows
    "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC: overflows
    "２０２５-01-30T10:30:00Z",  # fullwidth digits
    "2025-01-30T10:30:00Z\n",
    "",
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_accepted_timestamps_become_utc(text: str, expected: datetime) -> None:
    moment = parse_rfc3339(text)
    assert moment == expected
    assert moment.tzinfo is UTC


@pytest.mark.parametrize("text", REFUSED)
def test_refused_timestamps_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


@pytest.mark.parametrize("value", [1_738_233_000, None, b"2025-01-30T10:30:00Z"])
def test_only_strings_and_aware_datetimes(value: object) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(value)
