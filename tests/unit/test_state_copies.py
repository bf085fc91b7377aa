"""`copy_session` / `copy_user`: what `dataclasses.replace` gave the reducers, faster."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, date, datetime

from streams.model import SessionState, UserState, copy_session, copy_user

AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
SESSION = SessionState(
    "s1", "u1", "paused", 6, "cafe", {"scene": "cafe"}, {"wpm": 120}, AT, date(2026, 12, 5),
    AT, AT, "done", 7,
)  # fmt: skip
USER = UserState("u1", "s1", AT, {"lang": "ja"}, AT, 3)


def test_a_copy_equals_replace_field_by_field_and_is_a_new_object() -> None:
    for state, copy in ((SESSION, copy_session), (USER, copy_user)):
        copied = copy(state)  # type: ignore[operator]
        assert copied == replace(state) and copied is not state
        for f in fields(state):
            assert getattr(copied, f.name) is getattr(state, f.name)  # shallow, as replace


def test_changing_a_copy_leaves_the_original() -> None:
    copied = copy_session(SESSION)
    copied.status = "active"
    copied.version += 1
    assert (SESSION.status, SESSION.version) == ("paused", 7)
