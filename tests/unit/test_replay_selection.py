"""`rpcache replay --family/--kind`: which kinds of keys a selection means (pure)."""

from __future__ import annotations

import pytest

from streams.read.recompute import KEY_KINDS
from streams.read.replay import parse_kinds, parse_rate

ALL = list(KEY_KINDS)


@pytest.mark.parametrize(
    ("families", "kinds", "expected"),
    [
        (None, None, ALL),
        ("all", None, ALL),
        ("all", "all", ALL),
        ("sessions", None, ["stats", "sessions", "users", "metrics"]),
        ("ai", None, ["ai"]),
        ("voice,ai", None, ["ai", "voice"]),  # replay order, not the order given
        (" voice , ", None, ["voice"]),
        (None, "users", ["users"]),
        ("all", "metrics,stats", ["stats", "metrics"]),  # --family's default is "all"
        ("voice", "users", ["users", "voice"]),  # the union of both
        ("sessions,ai,voice", None, ALL),
    ],
)
def test_selection_names_kinds_in_replay_order(
    families: str | None, kinds: str | None, expected: list[str]
) -> None:
    assert parse_kinds(families, kinds) == expected


@pytest.mark.parametrize(
    ("families", "kinds", "message"),
    [
        ("sesions", None, "unknown families ['sesions']; choose from sessions, ai, voice"),
        ("users", None, "users: a kind of key, use --kind"),
        ("metrics,stats", None, "metrics, stats: a kind of key, use --kind"),
        (None, "clips", "unknown kinds ['clips']"),
        (",", None, "--family ',' names nothing"),  # not "every kind"
        (None, " , ", "--kind ' , ' names nothing"),
        ("", None, "--family '' names nothing"),
    ],
)
def test_unknown_names_are_refused_with_what_to_use(
    families: str | None, kinds: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_kinds(families, kinds)


@pytest.mark.parametrize(
    ("text", "per_s"),
    [(None, None), ("", None), ("500", 500.0), ("500/s", 500.0), ("30/m", 0.5), ("36/h", 0.01)],
)
def test_rates_per_second_minute_or_hour(text: str | None, per_s: float | None) -> None:
    assert parse_rate(text) == per_s


@pytest.mark.parametrize("text", ["10/d", "fast", "0/s", "-5", "nan", "inf/s", "10/"])
def test_other_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)
