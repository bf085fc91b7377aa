"""Redis key formats, TTLs and topic names (SPEC §2, §4 and §8).

The one place that spells a key or a topic: reducers, the reader, replay and
warm-up all call these functions. Ids reaching them were validated by
`schemas.events` (patterns without `:`, `{`, `}` or spaces), so a key can
never be injected through an id.

Every function below builds the SPEC §4 key (the *logical* key). On a Redis
Cluster target with the design's slot layout (`REDIS_CLUSTER_LAYOUT=design`),
`layout_key` turns it into the key actually stored, and `logical_key` turns
a stored key back (the end of this module).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal, NamedTuple
from zoneinfo import ZoneInfo

import orjson

from schemas.hashing import H
from schemas.slots import SlotRange, first_tag, tag_table

SESSION_TTL: Final = timedelta(minutes=30)
"""A session hash lives 30 minutes after its last activity; idle expiry too."""
USER_STATE_TTL: Final = timedelta(hours=1)
AI_RESPONSE_TTL: Final = timedelta(hours=1)
VOICE_TTL: Final = timedelta(hours=24)
METRICS_TTL: Final = timedelta(minutes=5)
STATS_TTL: Final = timedelta(hours=24)
SCENARIO_CONTEXT_TTL: Final = timedelta(hours=1)
"""Warm-up's popular scenario contexts live as long as cached AI responses."""
LOADED_MARKER_TTL: Final = timedelta(hours=24)
"""The data-loss marker's TTL; refreshed by the worker far more often than this."""

MetricName = Literal["response_time", "synthesis_time"]
MetricWindow = Literal["1m", "5m", "1h"]
METRIC_WINDOWS: Final[dict[MetricWindow, timedelta]] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
}

# --- topics -----------------------------------------------------------------
SESSION_TOPIC: Final = "session-events"
INFERENCE_TOPIC: Final = "inference-events"
SYNTHESIS_TOPIC: Final = "synthesis-events"
DEAD_LETTER_TOPIC: Final = "dead-letters"
ALERTS_TOPIC: Final = "alerts"
AGENT_TOPICS: Final[dict[str, str]] = {
    "sessions": SESSION_TOPIC,
    "inference": INFERENCE_TOPIC,
    "synthesis": SYNTHESIS_TOPIC,
}
"""The source topics, each with its Faust agent and its pipeline: agent name → topic suffix.

The name is the Faust agent's name and the `agent` label of the metrics;
the write side's registry (streams/write/registry.py) gives each its handler."""
SOURCE_TOPICS: Final = tuple(AGENT_TOPICS.values())


def topic_name(prefix: str, suffix: str) -> str:
    """Full topic name, e.g. `roleplay.session-events`."""
    return f"{prefix}{suffix}"


# --- keys -------------------------------------------------------------------
def session_key(session_id: str) -> str:
    return f"session:{session_id}"


def user_state_key(user_id: str) -> str:
    return f"user:{user_id}:state"


def ai_response_key(prompt: str) -> str:
    return ai_response_key_for_hash(H(prompt))


def ai_response_key_for_hash(prompt_hash: str) -> str:
    return f"ai_response:{prompt_hash}"


def voice_key(speaker_id: int, text: str) -> str:
    return voice_key_for_hash(speaker_id, H(text))


def voice_key_for_hash(speaker_id: int, text_hash: str) -> str:
    return f"voice:{speaker_id}:{text_hash}"


def metrics_key(metric: MetricName, window: MetricWindow) -> str:
    return f"metrics:{metric}:{window}"


def stats_key(day: date) -> str:
    return f"stats:realtime:{day.isoformat()}"


def scenario_context_key(scenario_id: str) -> str:
    """Warm-up's copy of a popular scenario's conversation context (JSON)."""
    return f"scenario:{scenario_id}:context"


LOADED_MARKER_KEY: Final = "rpcache:loaded"
"""The data-loss marker: present while Redis holds rpcache's projection, so its
absence means Redis lost its data (a restart without persistence, a FLUSHALL)."""


# --- time helpers -------------------------------------------------------------
def format_utc(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, second precision or finer, as stored in hashes.

    Exactly `moment.astimezone(UTC).isoformat().replace("+00:00", "Z")`
    (microseconds when not zero; a naive moment is taken as local time), written
    by orjson: 0.3 µs against 1.1 µs a call, and the worker formats two or
    three moments per event (occurred_at in the stored JSON, the hashes'
    timestamps; 1.7 % of the worker's samples in a py-spy profile of the full
    bench). `tests/unit/test_keys.py` holds the two to the same output.
    """
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return orjson.dumps(moment, option=orjson.OPT_UTC_Z)[1:-1].decode()


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def business_day(moment: datetime, tz: ZoneInfo) -> date:
    """The calendar day of `moment` in the business time zone (BUSINESS_TZ): the day
    of `stats_key` and of the daily quotas (SPEC §4)."""
    return moment.astimezone(tz).date()


# --- key families and the design's slot layout (SPEC §8) ------------------------
KeyFamily = Literal["sessions", "ai", "voice"]
KEY_FAMILIES: Final[tuple[KeyFamily, ...]] = ("sessions", "ai", "voice")
"""The families of keys of SPEC §8, each with a Redis target of its own: sessions
(`session:`, `user:…:state`, `metrics:`, `stats:`, `scenario:`, rpcache's own),
ai (`ai_response:`), voice (`voice:`)."""

ClusterLayout = Literal["hash", "design"]
"""How keys are placed on a Redis Cluster target (REDIS_CLUSTER_LAYOUT): `hash`, the
SPEC §4 keys spread by their own hash as Redis Cluster normally does; `design`, every
key tagged so that its family lands in its slot range (SPEC §8)."""

DESIGN_SLOT_RANGES: Final[dict[KeyFamily, SlotRange]] = {
    "sessions": SlotRange(0, 5460),
    "ai": SlotRange(5461, 10922),
    "voice": SlotRange(10923, 16383),
}
"""Each family's slots in the design layout (SPEC §8): the three ranges
`redis-cli --cluster create` gives three masters, in this order."""
DESIGN_TAG_LETTERS: Final[dict[KeyFamily, str]] = {"sessions": "s", "ai": "a", "voice": "v"}
"""The first letter of every tag of a family's table (SPEC §8)."""
OWN_TAG_LETTER: Final = "r"
"""The first letter of the tags of rpcache's own keys (`own_key`); SPEC §8 leaves the
letter open, `r` keeps them apart from every family's tags."""
OWN_PREFIX: Final = "rpcache:"
"""The prefix of rpcache's own keys (the data-loss marker `LOADED_MARKER_KEY`)."""


def family_tags(family: KeyFamily) -> tuple[str, ...]:
    """The family's 256 tags (SPEC §8): tag i is the first `letter + base36(n)` whose slot
    lies in part i of the family's range. Built on first use (5–8 ms), then cached."""
    return tag_table(DESIGN_TAG_LETTERS[family], DESIGN_SLOT_RANGES[family])


def _first_byte(hex_digits: str) -> int:
    return int(hex_digits[:2], 16)


class _Form(NamedTuple):
    """One kind of SPEC §4 key and its design-layout form."""

    family: KeyFamily
    logical: re.Pattern[str]
    """The SPEC §4 key; its groups are the fields."""
    design: re.Pattern[str]
    """The design-layout key; group 1 is the tag, then the same fields."""
    logical_format: str
    design_format: str
    """`str.format` templates: the fields by position, the tag as `tag`."""
    pick: Callable[[tuple[str, ...]], int]
    """The index into the family's table: the first byte of H(x) (SPEC §8)."""


_FIELD = r"([^:{}]+)"
_HEX = r"([0-9a-f]{32})"
_TAG = r"\{([0-9a-z]+)\}"


def _form(
    family: KeyFamily,
    logical: str,
    design: str,
    pick: Callable[[tuple[str, ...]], int],
) -> _Form:
    """A form from two templates in which `<f>` is a field, `<h>` an H(…) and `<tag>` the tag."""

    def pattern(template: str) -> re.Pattern[str]:
        text = re.escape(template).replace("<f>", _FIELD).replace("<h>", _HEX)
        return re.compile(text.replace("<tag>", _TAG))

    def fmt(template: str) -> str:
        out = template.replace("<tag>", "{{{tag}}}")
        for i in range(template.count("<f>") + template.count("<h>")):
            out = re.sub("<f>|<h>", f"{{{i}}}", out, count=1)
        return out

    return _Form(family, pattern(logical), pattern(design), fmt(logical), fmt(design), pick)


def _by_hash_of_first(fields: tuple[str, ...]) -> int:
    return _first_byte(H(fields[0]))


_FORMS: Final[dict[str, _Form]] = {
    # x = session_id / user_id / scenario_id: the first byte of H(x) picks the tag.
    "session": _form("sessions", "session:<f>", "session:<tag>:<f>", _by_hash_of_first),
    "user": _form("sessions", "user:<f>:state", "user:<tag>:<f>:state", _by_hash_of_first),
    "scenario": _form(
        "sessions", "scenario:<f>:context", "scenario:<tag>:<f>:context", _by_hash_of_first
    ),
    # Few keys, read together: tag 0 of the sessions table.
    "metrics": _form("sessions", "metrics:<f>:<f>", "metrics:<tag>:<f>:<f>", lambda _: 0),
    "stats": _form("sessions", "stats:realtime:<f>", "stats:realtime:<tag>:<f>", lambda _: 0),
    # The key already holds H(prompt) / H(text): its first byte picks the tag.
    "ai_response": _form(
        "ai", "ai_response:<h>", "ai_response:<tag>:<h>", lambda f: _first_byte(f[0])
    ),
    "voice": _form("voice", "voice:<f>:<h>", "voice:<tag>:<f>:<h>", lambda f: _first_byte(f[1])),
}
"""Every kind of key rpcache writes, by the text before its first `:`."""
_OWN_TAGGED: Final = re.compile(re.escape(OWN_PREFIX) + _TAG + r":([^{}]+)")


def _form_of(key: str) -> _Form:
    form = _FORMS.get(key.partition(":")[0])
    if form is None:
        raise ValueError(f"not a key rpcache writes (SPEC §4): {key!r}")
    return form


def layout_key(key: str, layout: ClusterLayout) -> str:
    """The key stored for the SPEC §4 key `key` under `layout` (SPEC §8).

    `hash`: `key` itself, unchecked. `design`: the key with its family's tag
    (the literal braces are Redis's hash-tag syntax):

    | SPEC §4 key | design layout | tag: T_family[…] |
    |---|---|---|
    | `session:{id}` | `session:{tag}:{id}` | first byte of H(id) |
    | `user:{id}:state` | `user:{tag}:{id}:state` | first byte of H(id) |
    | `scenario:{id}:context` | `scenario:{tag}:{id}:context` | first byte of H(id) |
    | `metrics:{m}:{w}` | `metrics:{tag}:{m}:{w}` | tag 0 of sessions |
    | `stats:realtime:{d}` | `stats:realtime:{tag}:{d}` | tag 0 of sessions |
    | `ai_response:{h}` | `ai_response:{tag}:{h}` | first byte of h = H(prompt) |
    | `voice:{s}:{h}` | `voice:{tag}:{s}:{h}` | first byte of h = H(text) |

    For AI and voice the byte is that of the hash the key already carries,
    as SPEC §8's test vectors have it (`ai_response:{att}:125aeadf…` is tag
    0x12 of the AI table). `scenario:` keys (warm-up's contexts, absent from
    SPEC §8's table) follow `user:`.

    Raises ValueError for a key of no kind above, and for rpcache's own keys
    (`rpcache:…`), which exist once per master: use `own_key` for each.
    """
    if layout == "hash":
        return key
    if layout != "design":
        raise ValueError(f"unknown cluster layout {layout!r}: hash or design")
    if key.startswith(OWN_PREFIX):
        raise ValueError(
            f"{key!r} is one of rpcache's own keys, kept once per master: own_key(key, slots)"
        )
    form = _form_of(key)
    found = form.logical.fullmatch(key)
    if found is None:
        raise ValueError(f"not a SPEC §4 {key.partition(':')[0]} key: {key!r}")
    fields = found.groups()
    tag = family_tags(form.family)[form.pick(fields)]
    return form.design_format.format(*fields, tag=tag)


def logical_key(key: str, layout: ClusterLayout) -> str:
    """The SPEC §4 key of `key` as stored under `layout`: the inverse of `layout_key`
    (and of `own_key`), for `rpcache check` and tools that scan a cluster.

    rpcache's own keys lose their tag in either layout (`rpcache:{r1}:loaded`
    → `rpcache:loaded`; untagged, they are returned as they are). Otherwise
    `hash` returns `key` unchanged; `design` raises ValueError for a key of
    no known kind, without its tag, or whose tag is not the one the layout
    gives it (a key written by another rule would sit in the wrong slot).
    """
    if key.startswith(OWN_PREFIX):
        own = _OWN_TAGGED.fullmatch(key)
        return OWN_PREFIX + own.group(2) if own else key
    if layout == "hash":
        return key
    if layout != "design":
        raise ValueError(f"unknown cluster layout {layout!r}: hash or design")
    form = _form_of(key)
    found = form.design.fullmatch(key)
    if found is None:
        raise ValueError(f"not a design-layout {key.partition(':')[0]} key: {key!r}")
    tag, *rest = found.groups()
    fields = tuple(rest)
    expected = family_tags(form.family)[form.pick(fields)]
    if tag != expected:
        raise ValueError(f"{key!r} carries the tag {tag!r}; the design layout gives {expected!r}")
    return form.logical_format.format(*fields)


def own_key(key: str, slots: SlotRange) -> str:
    """rpcache's own key `key` (`rpcache:…`, e.g. `LOADED_MARKER_KEY`) tagged to land in
    `slots`: `rpcache:loaded` → `rpcache:{r…}:loaded`, the tag being the first
    `r + base36(n)` whose slot lies in `slots` (`schemas.slots.first_tag`).

    On a cluster these keys exist once per master (SPEC §8), in either layout:
    pass a range the master serves. Raises ValueError for a key that is not
    rpcache's own, already carries braces, or a range outside 0–16383.
    """
    rest = key.removeprefix(OWN_PREFIX)
    if rest == key or not rest or "{" in rest or "}" in rest:
        raise ValueError(f"not one of rpcache's own untagged keys ({OWN_PREFIX}…): {key!r}")
    return f"{OWN_PREFIX}{{{first_tag(OWN_TAG_LETTER, slots)}}}:{rest}"
