"""The HTTP edge: the real Envoy (deploy/envoy/envoy.yaml) in front of gRPC servers.

Two Envoys for the module, both rendered from the one template: one in front
of the real service (HTTP/JSON calls with JWTs, errors, limits, the SSE
watch), one in front of a recording gRPC server that implements only the two
webhook RPCs, so that what Envoy hands the service (the body, byte for byte,
its content type, the headers as metadata, the hub.* parameters) can be
looked at directly.

What these check is Envoy's transcoding and routing, the same whatever
store is behind the service: store_independent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc
from google.api import httpbody_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.e2e.requests import unique_tenant
from tests.support.envoy import (
    EnvoyConfigRefused,
    EnvoyEdge,
    build_edge_descriptor,
    validate,
)
from tests.support.grpc_client import bearer
from tests.support.service import ServiceProcess
from tools.render_envoy import EdgeSettings, HostPort, write_config

pytestmark = pytest.mark.store_independent

MIB = 1024 * 1024
SEND_LIMIT = 1 * MIB  # the buffer filter's default in envoy.yaml
WEBHOOK_LIMIT = 3 * MIB  # the webhooks route's own


@pytest.fixture(scope="module")
def edge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("edge")


@pytest.fixture(scope="module")
def descriptor(edge_dir: Path) -> Path:
    return build_edge_descriptor(edge_dir)


@pytest.fixture(scope="module")
def edge(service: ServiceProcess, descriptor: Path, edge_dir: Path) -> Iterator[EnvoyEdge]:
    """Envoy in front of the session's real service."""
    envoy = EnvoyEdge(edge_dir / "service-edge", upstream=service.address, descriptor=descriptor)
    envoy.start()
    yield envoy
    envoy.stop()


@pytest.fixture
def http(edge: EnvoyEdge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.url, timeout=15) as client:
        yield client


@dataclass(frozen=True)
class Tenant:
    name: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@pytest.fixture
def tenant(service: ServiceProcess, request: pytest.FixtureRequest) -> Tenant:
    name = unique_tenant(request.node.name)
    return Tenant(name, service.token(name))


def send_body(text: str = "hello", **fields: Any) -> dict[str, Any]:
    """A SendMessageRequest in the JSON mapping (field names as in the proto)."""
    return {
        "message_id": f"m-{uuid.uuid4().hex}",
        "user_id": "user-1",
        "channel": "CHANNEL_WEB",
        "content": {"type": "MESSAGE_TYPE_TEXT", "text": text},
        **fields,
    }


def detail(status: dict[str, Any], type_name: str) -> dict[str, Any]:
    """The google.rpc.Status detail of that type, from an error's JSON body."""
    wanted = f"type.googleapis.com/{type_name}"
    found = [d for d in status.get("details", []) if d.get("@type") == wanted]
    assert found, f"no {type_name} in {status}"
    first: dict[str, Any] = found[0]
    return first


# ------------------------------------------------------------------ the config


def test_the_rendered_config_passes_envoy_validation(descriptor: Path, tmp_path: Path) -> None:
    settings = EdgeSettings(
        listen=HostPort("0.0.0.0", 8080),
        admin_port=9901,
        service=HostPort("chat-service.internal", 8001),
        descriptor=descriptor,
    )
    config = write_config(settings, tmp_path / "envoy.yaml")
    assert "${" not in config.read_text()
    assert "OK" in validate(config)
    # Envoy's validation is a real check: without the descriptor set the
    # transcoder cannot load, and the same config is refused.
    missing = EdgeSettings(
        settings.listen, settings.admin_port, settings.service, tmp_path / "gone.pb"
    )
    with pytest.raises(EnvoyConfigRefused, match=r"gone\.pb"):
        validate(write_config(missing, tmp_path / "broken.yaml"))


# ------------------------------------------------------------------ the API over HTTP/JSON


def test_send_message_over_http_json_returns_the_reply(http: httpx.Client, tenant: Tenant) -> None:
    reply = http.post("/v1/messages", json=send_body("hello there"), headers=tenant.auth)

    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["conversation_id"]
    # Field names as in the proto, and defaults printed: one stable shape.
    assert body["processing_metadata"]["fallback_used"] is False
    assert body["processing_metadata"]["sequence"] == "1"  # int64 is a JSON string
    assert body["response"]["text"]
    assert [r["role"] for r in body["replies"]] == ["MESSAGE_ROLE_BOT"]
    assert body["replies"][0]["reply_to_message_id"] == body["message_id"]


def test_conversations_and_messages_are_read_over_get(http: httpx.Client, tenant: Tenant) -> None:
    sent = http.post("/v1/messages", json=send_body("hello"), headers=tenant.auth).json()
    conversation_id = sent["conversation_id"]

    one = http.get(f"/v1/conversations/{conversation_id}", headers=tenant.auth)
    assert one.status_code == 200, one.text
    assert one.json()["conversation"]["conversation_id"] == conversation_id
    assert one.json()["conversation"]["user_id"] == "user-1"

    messages = http.get(
        f"/v1/conversations/{conversation_id}/messages",
        params={"page_size": 10, "order": "SORT_ORDER_DESCENDING"},
        headers=tenant.auth,
    )
    assert messages.status_code == 200, messages.text
    page = messages.json()
    assert [m["sequence"] for m in page["messages"]] == ["2", "1"]
    assert [m["role"] for m in page["messages"]] == ["MESSAGE_ROLE_BOT", "MESSAGE_ROLE_USER"]
    assert page["next_page_token"] == ""  # printed although empty: the last page

    listed = http.get(
        "/v1/conversations", params={"channel": "CHANNEL_WEB"}, headers=tenant.auth
    ).json()
    assert [c["conversation_id"] for c in listed["conversations"]] == [conversation_id]


def test_an_invalid_field_is_a_400_with_the_status_as_json(
    http: httpx.Client, tenant: Tenant
) -> None:
    reply = http.post("/v1/messages", json=send_body(user_id=""), headers=tenant.auth)

    assert reply.status_code == 400
    assert reply.headers["content-type"] == "application/json"
    status = reply.json()
    assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    violations = detail(status, "google.rpc.BadRequest")["field_violations"]
    assert [v["field"] for v in violations] == ["user_id"]
    assert detail(status, "google.rpc.ErrorInfo")["domain"]


def test_a_call_without_a_token_is_a_401(http: httpx.Client) -> None:
    reply = http.post("/v1/messages", json=send_body())

    assert reply.status_code == 401
    assert reply.json()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert detail(reply.json(), "google.rpc.ErrorInfo")["reason"] == "TOKEN_MISSING"


def test_an_unknown_conversation_is_a_404(http: httpx.Client, tenant: Tenant) -> None:
    reply = http.get("/v1/conversations/no-such-conversation", headers=tenant.auth)

    assert reply.status_code == 404
    info = detail(reply.json(), "google.rpc.ErrorInfo")
    assert info["metadata"] == {"conversation_id": "no-such-conversation"}


def test_an_unknown_query_parameter_is_a_400(http: httpx.Client, tenant: Tenant) -> None:
    reply = http.get("/v1/conversations", params={"page_sise": 5}, headers=tenant.auth)

    assert reply.status_code == 400
    assert "page_sise" in reply.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        # The admin RPCs and the others without an HTTP binding, as JSON...
        ("POST", "/chatbot.chat.v1.ChatService/CreateChannelConnection"),
        ("POST", "/chatbot.chat.v1.ChatService/UpdateConversationStatus"),
        ("POST", "/chatbot.chat.v1.ChatService/ExportConversation"),
        # ...paths no binding has, and methods the bound paths do not take.
        ("GET", "/v1/channelConnections"),
        ("DELETE", "/v1/conversations/some-id"),
        ("GET", "/v1/webhooks/acme/whatsapp/extra"),
        ("GET", "/"),
    ],
)
def test_what_is_not_exposed_is_a_404(
    http: httpx.Client, tenant: Tenant, method: str, path: str
) -> None:
    reply = http.request(method, path, json={} if method == "POST" else None, headers=tenant.auth)

    assert reply.status_code == 404, reply.text
    assert "x-envoy-upstream-service-time" not in reply.headers  # the service never saw it


async def test_native_grpc_through_the_edge_is_not_passed_on(
    edge: EnvoyEdge, tenant: Tenant
) -> None:
    # The edge speaks HTTP/2 too, but routes only the HTTP paths: a gRPC call
    # (admin or not) matches no route. Straight to the service, the same
    # GetConversation would be NOT_FOUND, the admin call would run.
    async with grpc.aio.insecure_channel(edge.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as get:
            await stub.GetConversation(
                pb.GetConversationRequest(conversation_id="x"), metadata=bearer(tenant.token)
            )
        with pytest.raises(grpc.aio.AioRpcError) as admin:
            await stub.ListChannelConnections(
                pb.ListChannelConnectionsRequest(), metadata=bearer(tenant.token)
            )
    assert get.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert admin.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_body_over_the_limit_is_a_413(http: httpx.Client, tenant: Tenant) -> None:
    body = json.dumps(send_body("x" * SEND_LIMIT)).encode()

    reply = http.post(
        "/v1/messages",
        content=body,
        headers={**tenant.auth, "content-type": "application/json"},
    )

    assert reply.status_code == 413


def test_health_is_served_over_http(http: httpx.Client) -> None:
    reply = http.get("/healthz")

    assert reply.status_code == 200


async def test_watch_conversations_is_a_server_sent_event_stream(
    edge: EnvoyEdge, tenant: Tenant
) -> None:
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    content_types: list[str] = []

    async with httpx.AsyncClient(base_url=edge.url, timeout=httpx.Timeout(15, read=None)) as client:

        async def watch() -> None:
            async with client.stream(
                "GET", "/v1/conversations:watch", headers=tenant.auth
            ) as response:
                content_types.append(response.headers["content-type"])
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        await events.put(json.loads(line.removeprefix("data: ")))

        watcher = asyncio.create_task(watch())
        try:
            # The transcoder sends the response headers with the first event,
            # so nothing says when the watch listens: send until it hears.
            await _send_until_heard(client, tenant, events)
            # Live now: this message's own event comes through.
            sent = await client.post("/v1/messages", json=send_body("again"), headers=tenant.auth)
            assert sent.status_code == 200, sent.text
            message_id = sent.json()["message_id"]
            event = await _next_matching(events, lambda e: e["event"]["message_id"] == message_id)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    assert content_types == ["text/event-stream"]
    assert event["event"]["event_type"] == "message.received"
    assert event["event"]["tenant_id"] == tenant.name
    assert event["event"]["conversation_id"] == sent.json()["conversation_id"]
    assert event["resume_token"]


async def _send_until_heard(
    client: httpx.AsyncClient, tenant: Tenant, events: asyncio.Queue[dict[str, Any]]
) -> None:
    for _ in range(20):
        sent = await client.post("/v1/messages", json=send_body("ping"), headers=tenant.auth)
        assert sent.status_code == 200, sent.text
        try:
            await asyncio.wait_for(events.get(), 1.0)
            return
        except TimeoutError:
            continue
    raise AssertionError("the watch heard none of 20 messages")


async def _next_matching(events: asyncio.Queue[dict[str, Any]], wanted: Any) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        while True:
            event = await events.get()
            if wanted(event):
                return event

    return await asyncio.wait_for(first(), 10)


# ------------------------------------------------------------ webhooks, as the service gets them

VERIFY_TOKEN = "open sesame"


@dataclass(frozen=True)
class Received:
    """One webhook RPC as the recording server got it."""

    method: str
    request: Any
    metadata: tuple[tuple[str, str | bytes], ...]

    def header(self, name: str) -> list[str | bytes]:
        return [value for key, value in self.metadata if key == name]


class WebhookRecorder(chat_service_pb2_grpc.ChatServiceServicer):
    """HandleWebhook and VerifyWebhook that keep what they got; every other
    RPC is UNIMPLEMENTED (the generated base). Answers roughly as the real
    ones will, so that the HTTP side of each answer can be checked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Received] = []

    def calls(self) -> list[Received]:
        with self._lock:
            return list(self._calls)

    def _keep(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._calls.append(Received(method, request, tuple(context.invocation_metadata())))

    def HandleWebhook(
        self, request: pb.HandleWebhookRequest, context: grpc.ServicerContext
    ) -> pb.HandleWebhookResponse:
        self._keep("HandleWebhook", request, context)
        if request.platform == "slack":  # Slack's url_verification wants its challenge back
            return pb.HandleWebhookResponse(
                body=httpbody_pb2.HttpBody(
                    content_type="application/json", data=b'{"challenge":"3eZbrw1aBm2rZgRNFdxV2"}'
                )
            )
        if not any(key == "x-hub-signature-256" for key, _ in context.invocation_metadata()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no signature")
        return pb.HandleWebhookResponse()

    def VerifyWebhook(
        self, request: pb.VerifyWebhookRequest, context: grpc.ServicerContext
    ) -> pb.VerifyWebhookResponse:
        self._keep("VerifyWebhook", request, context)
        if request.hub.mode != "subscribe" or request.hub.verify_token != VERIFY_TOKEN:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not this webhook's token")
        return pb.VerifyWebhookResponse(
            body=httpbody_pb2.HttpBody(
                content_type="text/plain", data=request.hub.challenge.encode()
            )
        )


@dataclass(frozen=True)
class RecordingUpstream:
    recorder: WebhookRecorder
    health: health.HealthServicer
    address: str


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    # The generated stub declares every RPC abstract; at run time the base
    # class answers the ones not overridden with UNIMPLEMENTED.
    recorder = WebhookRecorder()  # type: ignore[abstract]
    health_servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    chat_service_pb2_grpc.add_ChatServiceServicer_to_server(recorder, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield RecordingUpstream(recorder, health_servicer, f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def webhook_edge(
    upstream: RecordingUpstream, descriptor: Path, edge_dir: Path
) -> Iterator[EnvoyEdge]:
    envoy = EnvoyEdge(edge_dir / "webhook-edge", upstream=upstream.address, descriptor=descriptor)
    envoy.start()
    yield envoy
    envoy.stop()


@pytest.fixture
def hooks(webhook_edge: EnvoyEdge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=webhook_edge.url, timeout=15) as client:
        yield client


def _one_new_call(upstream: RecordingUpstream, before: int) -> Received:
    calls = upstream.recorder.calls()[before:]
    assert len(calls) == 1, calls
    return calls[0]


APP_SECRET = b"the app secret"

BODIES = {
    # Non-ASCII (raw UTF-8 and \u escapes), escaped slashes, odd whitespace,
    # a trailing newline: any re-serialization changes these bytes.
    "non_ascii": '{"entry":[{"text":"Grüße, 東京 🚀","esc":"\\u00e9"}]}'.encode(),
    "escaped_slashes": b'{"url":"https:\\/\\/example.com\\/a\\/b","n":1.10}',
    "odd_whitespace": b'{ "a" :\t1 ,\r\n  "b":[ ],"c" :  {}  }\n\n',
    "trailing_newline": b'{"object":"whatsapp_business_account"}\n',
    "duplicate_keys": b'{"k":1,"k":2,"z":0.0000001e7}',
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_a_webhook_body_reaches_the_service_byte_for_byte(
    hooks: httpx.Client, upstream: RecordingUpstream, name: str
) -> None:
    body = BODIES[name]
    signature = "sha256=" + hmac.new(APP_SECRET, body, hashlib.sha256).hexdigest()
    before = len(upstream.recorder.calls())

    reply = hooks.post(
        "/v1/webhooks/acme/whatsapp",
        content=body,
        headers={"content-type": "application/json", "x-hub-signature-256": signature},
    )

    assert reply.status_code == 200, reply.text
    call = _one_new_call(upstream, before)
    assert call.method == "HandleWebhook"
    assert (call.request.tenant_id, call.request.platform) == ("acme", "whatsapp")
    assert call.request.body.data == body
    assert call.request.body.content_type == "application/json"
    # The signature header arrives as metadata, and still matches the bytes.
    assert call.header("x-hub-signature-256") == [signature]
    expected = hmac.new(APP_SECRET, call.request.body.data, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, f"sha256={expected}")


def test_a_form_encoded_webhook_arrives_as_sent(
    hooks: httpx.Client, upstream: RecordingUpstream
) -> None:
    # Twilio posts forms and signs the URL with its query string
    # (bodySHA256 for JSON bodies): the service reads both from the metadata.
    body = b"Body=Hi+there%21&From=%2B15551234567&To=%2B15557654321&Emoji=%F0%9F%9A%80"
    before = len(upstream.recorder.calls())

    reply = hooks.post(
        "/v1/webhooks/acme/sms?bodySHA256=abc123",
        content=body,
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": "c2lnbmF0dXJl",
            "x-hub-signature-256": "sha256=00",
            # A caller's own copy must not pass for the real path.
            "x-envoy-original-path": "/spoofed",
        },
    )

    assert reply.status_code == 200, reply.text
    call = _one_new_call(upstream, before)
    assert call.request.platform == "sms"
    assert call.request.body.data == body
    assert call.request.body.content_type == "application/x-www-form-urlencoded"
    assert call.header("x-twilio-signature") == ["c2lnbmF0dXJl"]
    assert call.header("x-envoy-original-path") == ["/v1/webhooks/acme/sms?bodySHA256=abc123"]


def test_a_webhook_answer_is_the_http_body(hooks: httpx.Client) -> None:
    reply = hooks.post(
        "/v1/webhooks/acme/slack",
        content=b'{"type":"url_verification","challenge":"3eZbrw1aBm2rZgRNFdxV2"}',
        headers={"content-type": "application/json"},
    )

    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.content == b'{"challenge":"3eZbrw1aBm2rZgRNFdxV2"}'


def test_a_webhook_refused_by_the_service_is_a_401(hooks: httpx.Client) -> None:
    reply = hooks.post(
        "/v1/webhooks/acme/whatsapp", content=b"{}", headers={"content-type": "application/json"}
    )

    assert reply.status_code == 401
    assert reply.json()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]


def test_a_webhook_body_up_to_its_limit_passes_and_over_it_is_a_413(
    hooks: httpx.Client, upstream: RecordingUpstream
) -> None:
    # Larger than the API's limit, within the webhooks' own.
    big = b'{"pad":"' + b"a" * (WEBHOOK_LIMIT - 100) + b'"}'
    signed = {"content-type": "application/json", "x-hub-signature-256": "sha256=00"}
    before = len(upstream.recorder.calls())

    accepted = hooks.post("/v1/webhooks/acme/whatsapp", content=big, headers=signed)
    too_big = hooks.post(
        "/v1/webhooks/acme/whatsapp", content=b"a" * (WEBHOOK_LIMIT + 1), headers=signed
    )

    assert accepted.status_code == 200, accepted.text
    assert _one_new_call(upstream, before).request.body.data == big
    assert too_big.status_code == 413
    assert len(upstream.recorder.calls()) == before + 1  # the service never saw it


def test_the_meta_handshake_fills_hub_and_echoes_the_challenge(
    hooks: httpx.Client, upstream: RecordingUpstream
) -> None:
    before = len(upstream.recorder.calls())

    # As Meta sends it: form-style encoding, "+" for a space.
    reply = hooks.get(
        "/v1/webhooks/acme/messenger?hub.mode=subscribe&hub.verify_token=open+sesame"
        "&hub.challenge=1158201444"
    )

    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "text/plain"
    assert reply.content == b"1158201444"
    call = _one_new_call(upstream, before)
    assert call.method == "VerifyWebhook"
    assert call.request.tenant_id == "acme"
    assert call.request.platform == "messenger"
    hub = call.request.hub
    assert (hub.mode, hub.verify_token, hub.challenge) == ("subscribe", VERIFY_TOKEN, "1158201444")


def test_a_refused_handshake_is_a_403(hooks: httpx.Client) -> None:
    reply = hooks.get(
        "/v1/webhooks/acme/whatsapp",
        params={"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
    )

    assert reply.status_code == 403
    assert reply.json()["code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]


def test_healthz_follows_the_services_own_health(
    hooks: httpx.Client, upstream: RecordingUpstream
) -> None:
    assert hooks.get("/healthz").status_code == 200
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

    upstream.health.set("", not_serving)  # as the service does while it drains
    try:
        _wait_for_status(hooks, "/healthz", 503)
    finally:
        upstream.health.set("", serving)
    _wait_for_status(hooks, "/healthz", 200)


def _wait_for_status(client: httpx.Client, path: str, status: int, timeout: float = 10) -> None:
    # Envoy health-checks the service every second (envoy.yaml).
    deadline = time.monotonic() + timeout
    while (got := client.get(path).status_code) != status:
        assert time.monotonic() < deadline, f"{path} still {got}, not {status}, after {timeout}s"
        time.sleep(0.1)
