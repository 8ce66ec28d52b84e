"""HandleWebhook and VerifyWebhook between gRPC and the use cases.

Behind Envoy's gRPC-JSON transcoder a platform's HTTP call arrives as a
HandleWebhookRequest whose `body` (google.api.HttpBody) holds the raw
request body and its content type, and whose request headers are gRPC
metadata (lower case); `x-envoy-original-path` carries the path and query
string the platform called (Twilio signs the URL). The answer goes back as
an HttpBody, so the platform gets exactly those bytes and that content type.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chatbot.chat.v1 import chat_service_pb2 as pb

from chat_service.pipeline.webhooks import WebhookAnswer

ORIGINAL_PATH_HEADER = "x-envoy-original-path"
# gRPC's own and binary entries say nothing about the platform's call.
_SKIPPED_PREFIXES = ("grpc-", ":")


def webhook_headers(metadata: Iterable[Any] | None) -> dict[str, str]:
    """The call's text metadata as headers: names in lower case, the first
    value of a repeated name (a signature header comes once)."""
    headers: dict[str, str] = {}
    for item in metadata or ():
        key, value = item[0], item[1]
        name = str(key).lower()
        if name.endswith("-bin") or name.startswith(_SKIPPED_PREFIXES):
            continue
        if isinstance(value, bytes):
            continue
        headers.setdefault(name, value)
    return headers


def handle_webhook_response(answer: WebhookAnswer) -> pb.HandleWebhookResponse:
    response = pb.HandleWebhookResponse()
    response.body.content_type = answer.content_type
    response.body.data = answer.body
    return response


def verify_webhook_response(answer: WebhookAnswer) -> pb.VerifyWebhookResponse:
    response = pb.VerifyWebhookResponse()
    response.body.content_type = answer.content_type
    response.body.data = answer.body
    return response
