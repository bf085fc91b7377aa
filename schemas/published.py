"""JSON Schemas of every message on rpcache's topics, for analytics consumers (SPEC §7).

Generated from the models, never written by hand: one schema per event type
(schemas/events.py, validation mode, so it says what the worker accepts: the
form producers send) and one each for the dead-letter and alert messages
(schemas/messages.py, the models the worker publishes through). Draft
2020-12, keys sorted, two-space indent, so a regenerated file differs from
the committed one only when a model changed. `rpcache schemas` writes them;
`schemas/json/` in the checkout holds the committed copies (also installed
with the package), and a unit test fails when they drift.

Patterns are the models' own, with a final `$` written `$(?!\\n)`: the end of
the text both in ECMA-262 (JSON Schema's regex dialect, and what pydantic's
Rust regex does) and in Python's `re`, used by the `jsonschema` library, where
a bare `$` also matches before a final newline the worker rejects.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Final

import orjson
from pydantic import BaseModel

from schemas.events import TOPIC_OF_TYPE, Event
from schemas.messages import AlertMessage, DeadLetterMessage

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
COMMITTED_DIR: Final = Path(__file__).parent / "json"
"""Where the committed (and installed) copies live: `schemas/json/`."""
SUFFIX: Final = ".schema.json"
DEAD_LETTER_FILE: Final = "dead-letter" + SUFFIX
ALERT_FILE: Final = "alert" + SUFFIX


def event_models() -> list[type[BaseModel]]:
    """Every event model, in the order of the `Event` union."""
    return list(typing.get_args(Event))


def event_file(event_type: str) -> str:
    """`session.started` → `session.started.schema.json`."""
    return event_type + SUFFIX


def _event_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    kind: str = schema["properties"]["type"]["const"]
    topic = TOPIC_OF_TYPE[kind]
    schema["title"] = kind
    schema["description"] = _one_line(
        f"{schema.get('description', '')} On `{{prefix}}{topic}` (`roleplay.{topic}` by"
        " default), keyed by user_id; one UTF-8 JSON object per message. Unknown extra"
        " fields are ignored and strings may not contain U+0000. A message this schema"
        " rejects is dead-lettered instead of stored, as are a few it cannot express"
        " (over MAX_EVENT_BYTES, on another type's topic: the README's dead-letter reasons)."
        f" Model: schemas.events.{model.__name__}."
    )
    return schema


def _message_schema(model: type[BaseModel], title: str) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    schema["title"] = title
    schema["description"] = _one_line(
        f"{schema['description']} Fields may be added; ignore those you do not know. Model:"
        f" schemas.messages.{model.__name__}."
    )
    return schema


def _portable_patterns(node: Any) -> Any:
    """Every `pattern` ending in `$` made to end in `$(?!\\n)` (module docstring)."""
    if isinstance(node, list):
        return [_portable_patterns(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _portable_patterns(value) for key, value in node.items()}
    pattern = out.get("pattern")
    if isinstance(pattern, str) and pattern.endswith("$") and not pattern.endswith("\\$"):
        out["pattern"] = pattern + "(?!\\n)"
    return out


def _one_line(text: str) -> str:
    """A docstring's paragraphs as one line of text."""
    return " ".join(text.split())


def schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema, for every message on rpcache's topics."""
    out: dict[str, dict[str, Any]] = {}
    for model in event_models():
        schema = _event_schema(model)
        out[event_file(schema["title"])] = schema
    out[DEAD_LETTER_FILE] = _message_schema(DeadLetterMessage, "dead letter")
    out[ALERT_FILE] = _message_schema(AlertMessage, "alert")
    return {
        name: {"$schema": DIALECT, **_portable_patterns(schema)} for name, schema in out.items()
    }


def render(schema: dict[str, Any]) -> bytes:
    """The file's bytes: sorted keys, two-space indent, UTF-8, final newline."""
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def rendered() -> dict[str, bytes]:
    return {name: render(schema) for name, schema in schemas().items()}


def write(directory: Path) -> list[Path]:
    """Write every schema into `directory` (created with its parents); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in rendered().items():
        path = directory / name
        path.write_bytes(content)
        paths.append(path)
    return paths


def drift(directory: Path) -> list[str]:
    """How the `*.schema.json` files in `directory` differ from the models (empty: none)."""
    want = rendered()
    have = {p.name: p.read_bytes() for p in directory.glob("*" + SUFFIX)}
    problems = [f"{name}: missing" for name in sorted(want.keys() - have.keys())]
    problems += [f"{name}: differs" for name in sorted(want.keys() & have.keys())
                 if want[name] != have[name]]  # fmt: skip
    problems += [f"{name}: no model has it" for name in sorted(have.keys() - want.keys())]
    return problems
