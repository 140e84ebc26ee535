"""The hot-path JSON helpers fall back to the standard library, never fail where it would not."""

from __future__ import annotations

import json
import math

import pytest

from monitor import fastjson


def test_round_trip_of_a_record_batch():
    batch = [["t", "id-1", "SUCCESS", "1.5", "event", "", {"result": "'é ✓'"}, None]]
    encoded = fastjson.dumps(batch)
    assert isinstance(encoded, bytes)
    assert fastjson.loads(encoded) == batch == json.loads(encoded)


def test_what_orjson_refuses_goes_through_the_standard_library():
    assert math.isnan(fastjson.loads(b'{"x": NaN}')["x"])
    assert json.loads(fastjson.dumps({"big": 2**70})) == {"big": 2**70}
    # a lone surrogate cannot be UTF-8: replaced, the rest of the batch kept
    decoded = json.loads(fastjson.dumps(["ok", "bad \udcff name"]))
    assert decoded[0] == "ok" and decoded[1].startswith("bad ")


def test_not_json_raises_value_error():
    with pytest.raises(ValueError):
        fastjson.loads(b"{not json")


@pytest.mark.parametrize(
    "text",
    [
        b"[" * 100_000 + b"]" * 100_000,  # beyond both parsers' depth limits
        b'{"a": "\xff\xfe"}',  # invalid UTF-8
        b'{"a": 1' + b"0" * 5000 + b"}",  # an integer beyond int()'s digit limit
        b"",
    ],
    ids=["deep", "invalid-utf8", "5000-digit-int", "empty"],
)
def test_anything_undecodable_raises_value_error_only(text):
    with pytest.raises(ValueError):
        fastjson.loads(text)


def test_numbers_beyond_a_double_come_back_as_python_numbers():
    assert fastjson.loads(b"[1" + b"0" * 400 + b"]") == [10**400]
    assert fastjson.loads(b"[1e999, -1e999]") == [math.inf, -math.inf]
