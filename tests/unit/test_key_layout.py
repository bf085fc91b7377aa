"""Redis Cluster slots and the design's slot layout (schemas/slots.py, schemas/keys.py; SPEC §8)."""

from __future__ import annotations

import binascii
import itertools
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.hashing import H
from schemas.keys import (
    DESIGN_SLOT_RANGES,
    DESIGN_TAG_LETTERS,
    KEY_FAMILIES,
    LOADED_MARKER_KEY,
    KeyFamily,
    ai_response_key,
    family_tags,
    layout_key,
    logical_key,
    metrics_key,
    own_key,
    scenario_context_key,
    session_key,
    stats_key,
    user_state_key,
    voice_key,
)
from schemas.slots import (
    CLUSTER_SLOTS,
    SlotRange,
    base36,
    first_tag,
    hash_tag,
    key_slot,
    table_parts,
)
from streams.redis_targets import key_family

SESSION_ID = "550e8400-e29b-41d4-a716-446655440000"
PROMPT = "こんにちは"
TEXT = "こんにちは、どのようなご質問でしょうか？"


# --- the slot function: Redis's own test values and hash-tag rules -------------------
@pytest.mark.parametrize(
    ("key", "slot"),
    [
        ("123456789", 12739),  # CRC16-XMODEM check value 0x31C3 (Redis Cluster spec)
        ("foo", 12182),
        ("bar", 5061),
        ("{user1000}.following", 3443),  # hashes "user1000" only
        ("{user1000}.followers", 3443),
        ("user1000", 3443),
        ("", 0),
    ],
)
def test_key_slot(key: str, slot: int) -> None:
    assert key_slot(key) == slot
    assert key_slot(key.encode()) == slot


@pytest.mark.parametrize(
    ("key", "hashed"),
    [  # the examples of the Redis Cluster specification, "Hash tags"
        ("foo{}{bar}", "foo{}{bar}"),  # the first tag is empty: the whole key
        ("foo{{bar}}zap", "{bar"),
        ("foo{bar}{zap}", "bar"),  # the first tag only
        ("{", "{"),
        ("a}b{c}", "c"),
    ],
)
def test_hash_tag_rules(key: str, hashed: str) -> None:
    assert key_slot(key) == binascii.crc_hqx(hashed.encode(), 0) % 16384


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        (b"plain", b"plain"),
        (b"a{b}c", b"b"),
        (b"a{}c{d}", b"a{}c{d}"),
        (b"a{b", b"a{b"),
        (b"a}b{c}", b"c"),
        (b"{{x}}", b"{x"),
    ],
)
def test_hash_tag(key: bytes, tag: bytes) -> None:
    assert hash_tag(key) == tag


def test_slots_of_utf8_keys_are_those_of_their_bytes() -> None:
    assert key_slot(PROMPT) == key_slot(PROMPT.encode("utf-8"))


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0"), (9, "9"), (10, "a"), (35, "z"), (36, "10"), (1295, "zz")]
)
def test_base36(n: int, text: str) -> None:
    assert base36(n) == text
    assert int(text, 36) == n


# --- SPEC §8 test vectors -------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "tag0", "slot"),
    [("sessions", "s7o", 19), ("ai", "a93", 5478), ("voice", "v1fg", 10932)],
)
def test_tag_zero_of_each_table(family: KeyFamily, tag0: str, slot: int) -> None:
    assert family_tags(family)[0] == tag0
    assert key_slot(tag0) == slot


def test_first_eight_session_tags() -> None:
    assert family_tags("sessions")[:8] == ("s7o", "sk6", "sbd", "so", "s6u", "s189", "s8j", "s18")


@pytest.mark.parametrize(
    ("logical", "design", "slot"),
    [
        (session_key(SESSION_ID), f"session:{{svu}}:{SESSION_ID}", 3477),
        (user_state_key("user123"), "user:{s7w}:user123:state", 4906),
        (
            ai_response_key(PROMPT),
            "ai_response:{att}:125aeadf27b0459b8760c13a3d80912d",
            5845,
        ),
        (voice_key(6, TEXT), "voice:{vdv}:6:65b426ed729984f0146591dcae6c1edc", 13079),
    ],
)
def test_spec_key_vectors(logical: str, design: str, slot: int) -> None:
    assert layout_key(logical, "design") == design
    assert key_slot(design) == slot
    assert logical_key(design, "design") == logical


# --- the tables -------------------------------------------------------------------
def test_design_ranges_cover_every_slot_once_in_family_order() -> None:
    ranges = [DESIGN_SLOT_RANGES[f] for f in KEY_FAMILIES]
    assert ranges == [SlotRange(0, 5460), SlotRange(5461, 10922), SlotRange(10923, 16383)]
    assert sum(r.size for r in ranges) == CLUSTER_SLOTS
    assert all(a.hi + 1 == b.lo for a, b in itertools.pairwise(ranges))


@pytest.mark.parametrize("family", KEY_FAMILIES)
def test_every_tag_lands_in_its_part(family: KeyFamily) -> None:
    """Tag i lies in part i, and is the first candidate that does (SPEC §8's rule)."""
    slots = DESIGN_SLOT_RANGES[family]
    parts = table_parts(slots)
    tags = family_tags(family)
    letter = DESIGN_TAG_LETTERS[family]
    assert len(tags) == len(parts) == 256 == len(set(tags))
    assert parts[0].lo == slots.lo and parts[-1].hi == slots.hi
    for i, (tag, part) in enumerate(zip(tags, parts, strict=True)):
        assert part.holds(key_slot(tag)), (i, tag, part)
        assert tag[0] == letter and tag[1:] == base36(int(tag[1:], 36))
        earlier = (letter + base36(n) for n in range(int(tag[1:], 36)))
        assert not any(part.holds(key_slot(t)) for t in earlier), (i, tag)


@pytest.mark.parametrize("family", KEY_FAMILIES)
def test_parts_split_the_range(family: KeyFamily) -> None:
    parts = table_parts(DESIGN_SLOT_RANGES[family])
    assert all(a.hi + 1 == b.lo for a, b in itertools.pairwise(parts))
    assert {p.size for p in parts} <= {21, 22}


@pytest.mark.parametrize(
    "slots", [SlotRange(0, 254), SlotRange(5, 4), SlotRange(-1, 300), SlotRange(0, 16384)]
)
def test_bad_table_ranges(slots: SlotRange) -> None:
    with pytest.raises(ValueError, match="slot"):
        table_parts(slots)


# --- every kind of key -------------------------------------------------------------
ALL_KINDS = [
    (session_key(SESSION_ID), "sessions"),
    (user_state_key("user.name@example-1"), "sessions"),
    (scenario_context_key("cafe_02"), "sessions"),
    (metrics_key("response_time", "1m"), "sessions"),
    (metrics_key("synthesis_time", "1h"), "sessions"),
    (stats_key(date(2026, 11, 29)), "sessions"),
    (ai_response_key("hello"), "ai"),
    (voice_key(0, "hello"), "voice"),
]


@pytest.mark.parametrize(("key", "family"), ALL_KINDS)
def test_design_keys_land_in_their_family_range(key: str, family: KeyFamily) -> None:
    design = layout_key(key, "design")
    assert key_family(design) == key_family(key) == family
    assert DESIGN_SLOT_RANGES[family].holds(key_slot(design))
    assert logical_key(design, "design") == key


@pytest.mark.parametrize(("key", "family"), ALL_KINDS)
def test_hash_layout_is_the_identity(key: str, family: KeyFamily) -> None:
    assert layout_key(key, "hash") == key
    assert logical_key(key, "hash") == key


def test_metrics_and_stats_share_tag_zero_of_sessions() -> None:
    tag0 = family_tags("sessions")[0]
    assert layout_key(metrics_key("response_time", "5m"), "design") == (
        f"metrics:{{{tag0}}}:response_time:5m"
    )
    assert layout_key(stats_key(date(2026, 1, 2)), "design") == (
        f"stats:realtime:{{{tag0}}}:2026-01-02"
    )


@pytest.mark.parametrize(
    "key",
    [
        "unknown:1",
        "session:",
        "session:a:b",
        "session:{x}",
        "user:u1",
        "user:u1:other",
        "ai_response:not-a-hash",
        "ai_response:125AEADF27B0459B8760C13A3D80912D",
        "voice:6",
        "voice:6:abc",
        "stats:daily:2026-01-01",
        "metrics:response_time",
        "scenario:x",
        "plain",
    ],
)
def test_keys_of_unknown_form_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="key"):
        layout_key(key, "design")


@pytest.mark.parametrize(
    "key",
    [
        f"session:{SESSION_ID}",  # logical, not design
        f"session:{{s7o}}:{SESSION_ID}",  # a valid tag, but not the one the rule picks
        "user:{SVU}:u1:state",
        "voice:{vdv}:65b426ed729984f0146591dcae6c1edc",
        "nothing:{s7o}:x",
    ],
)
def test_logical_key_refuses_what_the_design_layout_never_writes(key: str) -> None:
    with pytest.raises(ValueError, match=r"key|tag"):
        logical_key(key, "design")


def test_unknown_layout() -> None:
    with pytest.raises(ValueError, match="layout"):
        layout_key(session_key(SESSION_ID), "ring")  # type: ignore[arg-type]


# --- rpcache's own keys: once per master ---------------------------------------------
@pytest.mark.parametrize("family", KEY_FAMILIES)
def test_own_keys_land_on_the_master_of_a_range(family: KeyFamily) -> None:
    slots = DESIGN_SLOT_RANGES[family]
    key = own_key(LOADED_MARKER_KEY, slots)
    assert key.startswith("rpcache:{r") and key.endswith("}:loaded")
    assert slots.holds(key_slot(key))
    for layout in ("hash", "design"):
        assert logical_key(key, layout) == LOADED_MARKER_KEY  # type: ignore[arg-type]


@pytest.mark.parametrize("slot", [0, 1, 5126, 8191, 16383])
def test_own_key_for_a_single_slot(slot: int) -> None:
    """Any slot can be reached (5126 is the hardest for `r`: n = 61 603)."""
    key = own_key(LOADED_MARKER_KEY, SlotRange(slot, slot))
    assert key_slot(key) == slot
    assert first_tag("r", SlotRange(slot, slot)) == key[len("rpcache:{") : key.index("}")]


def test_own_keys_are_not_laid_out_by_family() -> None:
    with pytest.raises(ValueError, match="own_key"):
        layout_key(LOADED_MARKER_KEY, "design")
    assert layout_key(LOADED_MARKER_KEY, "hash") == LOADED_MARKER_KEY
    assert logical_key(LOADED_MARKER_KEY, "design") == LOADED_MARKER_KEY


@pytest.mark.parametrize("key", ["session:x", "rpcache:", "rpcache:{r1}:loaded", "loaded"])
def test_own_key_refuses_other_keys(key: str) -> None:
    with pytest.raises(ValueError, match="own"):
        own_key(key, SlotRange(0, 5460))


# --- properties over arbitrary ids ---------------------------------------------------
IDS = st.from_regex(r"\A[A-Za-z0-9_.@-]{1,128}\Z")  # USER_ID_PATTERN of schemas.events
TEXTS = st.text(min_size=0, max_size=200)
DESIGN_KEYS = st.one_of(
    st.uuids().map(lambda u: session_key(str(u))),
    IDS.map(user_state_key),
    IDS.map(scenario_context_key),
    st.sampled_from(["response_time", "synthesis_time"]).flatmap(
        lambda m: st.sampled_from(["1m", "5m", "1h"]).map(lambda w: metrics_key(m, w))  # type: ignore[arg-type]
    ),
    st.dates().map(stats_key),
    TEXTS.map(ai_response_key),
    st.tuples(st.integers(min_value=0, max_value=2**31), TEXTS).map(lambda a: voice_key(*a)),
)


@given(DESIGN_KEYS)
def test_property_design_keys_land_in_their_family_range_and_round_trip(key: str) -> None:
    family = key_family(key)
    design = layout_key(key, "design")
    assert DESIGN_SLOT_RANGES[family].holds(key_slot(design))
    assert logical_key(design, "design") == key
    assert layout_key(key, "hash") == key


@given(TEXTS)
def test_property_the_tag_is_picked_by_the_first_byte_of_the_hash(text: str) -> None:
    digest = H(text)
    design = layout_key(ai_response_key(text), "design")
    assert design == f"ai_response:{{{family_tags('ai')[int(digest[:2], 16)]}}}:{digest}"
