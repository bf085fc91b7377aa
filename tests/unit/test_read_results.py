"""What a read returns (streams/read/results.py): values of recomputed ops, `ReadResult`."""

from __future__ import annotations

import pytest

from streams.projections import Delete, HashWrite, SortedSetAdd, StringWrite
from streams.read.results import ReadResult, hash_value, json_object, string_value


def test_values_of_recomputed_ops() -> None:
    assert hash_value(HashWrite("k", {"a": "1"}, 5)) == {"a": "1"}
    assert hash_value(Delete("k")) is None
    assert string_value(StringWrite("k", "v", 5)) == "v"
    assert string_value(Delete("k")) is None
    with pytest.raises(TypeError):
        hash_value(StringWrite("k", "v", 5))
    with pytest.raises(TypeError):
        string_value(SortedSetAdd("k", {}, 0, 1))


def test_result_map_and_json() -> None:
    r: ReadResult[str] = ReadResult('{"response": "やあ"}', "redis")
    assert r.map(json_object) == ReadResult({"response": "やあ"}, "redis")
    miss: ReadResult[str] = ReadResult(None, "miss")
    assert miss.map(json_object) == ReadResult(None, "miss")
    with pytest.raises(ValueError):
        json_object("[1]")
