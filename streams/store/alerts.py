"""`alert_state` (whether each rule fires, since when) and `alert_log` (every
alert published): written by the leader's alert engine, read by it and by the
monitor (`/metrics`, `/dashboard`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from streams.store.postgres import Connection


@dataclass(frozen=True, slots=True)
class AlertLogEntry:
    """One published alert: a rule's transition (an `alert_log` row)."""

    rule: str
    state: str
    """"firing" or "resolved"."""
    level: str
    metric: str
    value: float
    threshold: float
    at: datetime


@dataclass(frozen=True, slots=True)
class RuleState:
    """A rule's row of `alert_state`, with the level of its latest alert."""

    rule: str
    firing: bool
    since: datetime
    level: str | None
    """None when the rule has no alert_log row."""


async def firing_by_rule(conn: Connection) -> dict[str, bool]:
    """Whether each rule that ever changed state fires now."""
    rows = await conn.fetch("SELECT rule, firing FROM alert_state")
    return {r["rule"]: r["firing"] for r in rows}


async def record(conn: Connection, entry: AlertLogEntry) -> None:
    """Remember a published transition: the rule's state and the log row, in one
    transaction (a restart or a new leader does not announce it again)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO alert_state (rule, firing, since) VALUES ($1, $2, $3)"
            " ON CONFLICT (rule) DO UPDATE"
            " SET firing = EXCLUDED.firing, since = EXCLUDED.since",
            entry.rule, entry.state == "firing", entry.at,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO alert_log (rule, state, level, metric, value, threshold, at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            entry.rule, entry.state, entry.level, entry.metric, entry.value,
            entry.threshold, entry.at,
        )  # fmt: skip


async def rule_states(conn: Connection) -> list[RuleState]:
    """Every row of alert_state, each with the level of the rule's latest alert."""
    rows = await conn.fetch(
        "SELECT s.rule, s.firing, s.since, (SELECT l.level FROM alert_log l"
        " WHERE l.rule = s.rule ORDER BY l.id DESC LIMIT 1) AS level FROM alert_state s"
    )
    return [RuleState(r["rule"], r["firing"], r["since"], r["level"]) for r in rows]


async def latest_alerts(conn: Connection, limit: int) -> list[AlertLogEntry]:
    """The last `limit` alerts published, newest first."""
    rows = await conn.fetch(
        "SELECT rule, state, level, metric, value, threshold, at FROM alert_log"
        " ORDER BY id DESC LIMIT $1",
        limit,
    )
    return [AlertLogEntry(*r) for r in rows]
