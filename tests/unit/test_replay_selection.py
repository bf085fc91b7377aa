"""`rpcache replay --family/--kind`: which kinds of keys a selection means (pure)."""

from __future__ import annotations

import pytest

from streams.read.recompute import KEY_KINDS
from streams.read.replay import parse_kinds

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
    ],
)
def test_unknown_names_are_refused_with_what_to_use(
    families: str | None, kinds: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_kinds(families, kinds)
