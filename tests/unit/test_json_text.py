"""The stores' JSON text (adapters/storage/json_text.py): the same text the
standard library wrote for what the codecs store, and counted for the bench."""

from __future__ import annotations

import json
import math

import pytest

from adapters.storage import json_text
from chat_service import bench_counters


def test_text_is_compact_utf8_as_json_wrote_it() -> None:
    document = {"text": "Grüße 🙂", "n": [1, 2.5, None, True], "nested": {"empty": {}}}

    text = json_text.encode(document)

    assert text == json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    assert json_text.decode(text) == document
    assert json_text.decode(text.encode()) == document


def test_integers_of_any_size_and_number_keys_keep_their_meaning() -> None:
    # What json did, and orjson does not (it refuses both, and reads big
    # integers back as floats).
    assert json_text.decode(json_text.encode({"big": 2**70})) == {"big": 2**70}
    assert json_text.decode(json.dumps({"big": 2**70})) == {"big": 2**70}
    assert json_text.encode({1: "x"}) == '{"1":"x"}'


def test_text_that_is_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="truncated"):
        json_text.decode('{"a":')


def test_every_encode_and_decode_is_counted_for_the_bench(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bench_counters, "enabled", True)
    before = bench_counters.snapshot()

    json_text.decode(json_text.encode({"a": 1}))
    json_text.encode({})

    after = bench_counters.snapshot()
    assert after[bench_counters.JSON_ENCODES] - before[bench_counters.JSON_ENCODES] == 2
    assert after[bench_counters.JSON_DECODES] - before[bench_counters.JSON_DECODES] == 1
    # ... and by the function they were for (the bench report's break-down).
    site = "test_json_text.test_every_encode_and_decode_is_counted_for_the_bench"
    assert after[f"json_encodes.{site}"] - before.get(f"json_encodes.{site}", 0) == 2


def test_text_written_by_json_with_nan_still_reads() -> None:
    # Before msgspec, json.dumps wrote an engine's NaN score as a bare NaN.
    legacy = json.dumps({"scores": {"greeting": float("nan"), "bye": float("inf")}})
    scores = json_text.decode(legacy)["scores"]
    assert math.isnan(scores["greeting"])
    assert scores["bye"] == float("inf")
