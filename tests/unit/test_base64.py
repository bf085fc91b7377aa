"""`schemas.events.decode_base64` decides exactly as binascii's strict mode.

The fast path (pybase64) must never accept what `binascii.a2b_base64(…,
strict_mode=True)` refuses, nor decode anything to other bytes; what it
refuses must still be decided by binascii (e.g. CPython's `AAAA=`).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import decode_base64
from streams.model import voice_clip


def _strict(text: str) -> bytes | type[Exception]:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        return type(exc)


def _ours(text: str) -> bytes | type[Exception]:
    try:
        return decode_base64(text)
    except ValueError as exc:
        return type(exc)


CASES = [
    "",
    "QQ==",
    "QUI=",
    "QUJD",
    "QUJDRA==",
    "AAAA=",  # CPython's strict mode takes `=` after a complete group; pybase64 does not
    "AAAA==",
    "QQ",  # missing padding
    "QUJ",
    "Q===",
    "====",
    "=QUJD",
    "QQ==QQ==",  # data after padding
    "QUJD\n",  # line break
    "QU JD",
    "QUJD-_",  # URL-safe alphabet
    "QUJD\x00",
    "QUJDé",  # non-ASCII
    base64.b64encode(bytes(range(256)) * 300).decode(),  # a 77 KB clip
]


@pytest.mark.parametrize("text", CASES, ids=range(len(CASES)))
def test_decides_as_binascii_strict_mode(text: str) -> None:
    assert _ours(text) == _strict(text)


@given(st.text(alphabet="ABCDQgw09+/=-_ \n\t.\x00é", max_size=24))
def test_any_text_decides_as_binascii_strict_mode(text: str) -> None:
    assert _ours(text) == _strict(text)


@given(st.binary(max_size=300))
def test_every_encoding_round_trips(data: bytes) -> None:
    assert decode_base64(base64.b64encode(data).decode()) == data


@given(st.binary(max_size=300))
def test_a_projected_clip_is_standard_padded_base64(data: bytes) -> None:
    clip = voice_clip(7, "h", data, datetime(2025, 1, 30, tzinfo=UTC))
    assert clip is not None and clip.audio_b64 == base64.b64encode(data).decode()
