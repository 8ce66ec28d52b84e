"""Meta's webhooks (WhatsApp Cloud API, Messenger Platform) for end-to-end
tests: payloads built from the documented fixtures
(tests/fixtures/webhooks/) and the environment that points a service at the
Graph API emulator. (`eventually` lives in channel_e2e.py now; it is still
importable from here.)

Shared by the e2e tests that call HandleWebhook over gRPC
(tests/e2e/test_webhooks.py) and through the real Envoy edge
(tests/e2e/test_channels_through_edge.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.support.channel_e2e import channel_secrets_key, eventually
from tests.support.emulators.graph_api import GraphApiEmulator

__all__ = [
    "FIXTURES",
    "digits",
    "eventually",
    "fixture",
    "messenger_event",
    "service_environment",
    "whatsapp_status",
    "whatsapp_text",
]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"
Document = dict[str, Any]


def service_environment(graph: GraphApiEmulator) -> dict[str, str]:
    """A service whose replies go to `graph`, with a channel secrets key of
    its own (on the MongoDB pass, a production shape, the service refuses
    to make a development key)."""
    return graph.service_environment | {"CHANNEL_SECRETS_KEY": channel_secrets_key()}


def digits() -> str:
    """A fresh platform account or user id (Meta's are digits)."""
    return str(uuid.uuid4().int)[:15]


def fixture(platform: str, name: str) -> Document:
    document: Document = json.loads((FIXTURES / platform / f"{name}.json").read_bytes())
    return document


def whatsapp_text(
    phone_number_id: str,
    user: str,
    messages: Iterable[tuple[str, str]],
    *,
    sent_at: float | None = None,
) -> Document:
    """The documented text-message webhook of `phone_number_id`, carrying
    `messages` ((wamid, text) pairs) from `user`, sent at `sent_at` (Unix
    seconds; now by default)."""
    document = fixture("whatsapp", "text_message")
    value = document["entry"][0]["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = phone_number_id
    value["contacts"][0]["wa_id"] = user
    template = value["messages"][0]
    at = str(int(time.time() if sent_at is None else sent_at))
    value["messages"] = [
        template | {"from": user, "id": wamid, "timestamp": at, "text": {"body": text}}
        for wamid, text in messages
    ]
    return document


def whatsapp_status(
    phone_number_id: str, platform_id: str, status: str, user: str, *, late: int = 0
) -> Document:
    """A status webhook for our message `platform_id`, `late` seconds after
    now (so that a repeated status is another call, not the same bytes)."""
    document = fixture("whatsapp", "status_read")
    value = document["entry"][0]["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = phone_number_id
    value["statuses"][0] |= {
        "id": platform_id,
        "status": status,
        "recipient_id": user,
        "timestamp": str(int(time.time()) + late),
    }
    return document


def messenger_event(page_id: str, **fields: Any) -> Document:
    """A Messenger webhook with one `messaging` event of `fields` (sender,
    recipient, timestamp, message / delivery / read...) for `page_id`."""
    entry = {"id": page_id, "time": int(time.time() * 1000), "messaging": [fields]}
    return {"object": "page", "entry": [entry]}
