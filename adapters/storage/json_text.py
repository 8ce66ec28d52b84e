"""Documents as JSON text, as the stores keep them (SQLite's JSON columns).

msgspec, not the standard library: its encoder and decoder are several times
faster on the documents SendMessage stores (issue 13), and unlike orjson it
keeps the standard library's meaning of what the codecs store: integers of
any size both ways, and non-string keys written as strings. Neither writes
NaN or infinities (`null` instead): the stores' JSON functions refuse them.

Every call counts as a JSON encode or decode for the benchmark
(chat_service/bench_counters.py), as json.dumps and json.loads do.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from chat_service import bench_counters

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode(document: object) -> str:
    """Compact UTF-8 JSON text (what SQLite's TEXT and json_* take)."""
    if bench_counters.enabled:
        bench_counters.count_json(bench_counters.JSON_ENCODES)
    return _encoder.encode(document).decode()


def decode(text: str | bytes) -> Any:
    """The value of JSON text; ValueError when it holds none."""
    if bench_counters.enabled:
        bench_counters.count_json(bench_counters.JSON_DECODES)
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError as error:
        # Text written before msgspec by json.dumps may hold NaN or Infinity
        # (an engine's scores), which msgspec refuses and json reads: stored
        # data stays readable. Text that is no JSON at all fails with
        # msgspec's error (a ValueError).
        try:
            return json.loads(text)
        except ValueError:
            raise error from None
