"""The MCP engine client over TLS, against a real TLS gRPC server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from adapters.engine.grpc_engine import GrpcEngine
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel
from chat_service.domain.model import ConversationState, ProcessingHints
from chat_service.ports import EngineFailure, EngineRequest
from tests.support.engine_server import EngineBehaviour, running_engine
from tests.support.net import free_port
from tests.support.tls import Certificate, self_signed

REQUEST = EngineRequest(
    tenant_id="acme",
    conversation_id="c-1",
    message_id="m-1",
    user_id="u-1",
    channel=Channel.WEB,
    content=MessageContent.of_text("over tls?"),
    context=ConversationState(),
    hints=ProcessingHints(),
    recent_messages=(),
    sequence=1,
)


@dataclass
class TlsEngine:
    port: int
    certificate: Certificate
    behaviour: EngineBehaviour


@pytest.fixture
async def tls_engine() -> AsyncIterator[TlsEngine]:
    certificate = self_signed()
    credentials = grpc.ssl_server_credentials([(certificate.key_pem, certificate.cert_pem)])
    port = free_port()
    async with running_engine(port, credentials=credentials) as behaviour:
        yield TlsEngine(port, certificate, behaviour)


async def _ask(engine: GrpcEngine) -> str:
    try:
        reply = await engine.process(REQUEST)
    finally:
        await engine.close()
    return reply.contents[0].text


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_tls_with_the_engines_ca_is_answered(tls_engine: TlsEngine, host: str) -> None:
    engine = GrpcEngine(
        f"{host}:{tls_engine.port}",
        timeout=5,
        tls=True,
        root_certificates=tls_engine.certificate.cert_pem,
    )

    assert await _ask(engine) == "mcp heard: over tls? (history 0)"
    assert len(tls_engine.behaviour.requests) == 1


@pytest.mark.parametrize(
    ("tls", "roots"),
    [
        (True, None),  # the system's roots do not know a self-signed engine
        (True, "another"),  # a CA that did not sign the engine's certificate
        (False, None),  # plaintext to a TLS server
    ],
    ids=["system-roots", "other-ca", "plaintext"],
)
async def test_an_engine_the_client_cannot_trust_is_never_asked(
    tls_engine: TlsEngine, tls: bool, roots: str | None
) -> None:
    engine = GrpcEngine(
        f"localhost:{tls_engine.port}",
        timeout=2,
        tls=tls,
        root_certificates=self_signed().cert_pem if roots else None,
    )

    with pytest.raises(EngineFailure) as failed:
        await _ask(engine)

    assert failed.value.reason in {"unavailable", "error"}
    assert tls_engine.behaviour.requests == []


async def test_a_ca_file_that_is_no_certificate_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="PEM certificate"):
        GrpcEngine("localhost:1", timeout=1, tls=True, root_certificates=b"not a certificate")
