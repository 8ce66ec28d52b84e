"""The service asks its MCP engine over TLS (MCP_ENGINE_TLS, MCP_ENGINE_CA_FILE)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2_grpc

from tests.support.engine_server import running_engine
from tests.support.grpc_client import bearer, text_request
from tests.support.net import free_port
from tests.support.service import ServiceProcess
from tests.support.tls import self_signed

# Refused or decided before the store is touched: the MongoDB pass of
# `make test` leaves this module out (see the marker in pyproject.toml).
pytestmark = pytest.mark.store_independent


async def test_the_service_asks_a_tls_engine(fresh_service: ServiceProcess, tmp_path: Path) -> None:
    certificate = self_signed()
    ca_file = tmp_path / "engine-ca.pem"
    ca_file.write_bytes(certificate.cert_pem)
    credentials = grpc.ssl_server_credentials([(certificate.key_pem, certificate.cert_pem)])
    port = free_port()
    async with running_engine(port, credentials=credentials) as engine:
        fresh_service.extra_env.update(
            {
                "MCP_ENGINE_URL": f"localhost:{port}",
                "MCP_ENGINE_TLS": "true",
                "MCP_ENGINE_CA_FILE": str(ca_file),
            }
        )
        fresh_service.start()
        async with grpc.aio.insecure_channel(fresh_service.address) as channel:
            stub = chat_service_pb2_grpc.ChatServiceStub(channel)
            reply = await stub.SendMessage(
                text_request("secure?"), metadata=bearer(fresh_service.token("acme"))
            )

    assert reply.processing_metadata.engine == "mcp"
    assert reply.response.text == "mcp heard: secure? (history 0)"
    assert len(engine.requests) == 1


def test_a_ca_file_that_is_no_certificate_stops_the_start(
    fresh_service: ServiceProcess, tmp_path: Path
) -> None:
    ca_file = tmp_path / "engine-ca.pem"
    ca_file.write_text("not a certificate")
    fresh_service.extra_env.update(
        {
            "MCP_ENGINE_URL": "localhost:1",
            "MCP_ENGINE_TLS": "true",
            "MCP_ENGINE_CA_FILE": str(ca_file),
        }
    )

    with pytest.raises(RuntimeError, match="MCP_ENGINE_CA_FILE"):
        fresh_service.start()
