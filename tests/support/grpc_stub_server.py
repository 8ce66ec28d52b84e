"""A stub of another platform service (the MCP engine, the Security Hub) as
a real grpc.aio server on a loopback port, plaintext or TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc


@asynccontextmanager
async def serving(
    add_servicer: Callable[[grpc.aio.Server], None],
    port: int,
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[None]:
    """Serves what `add_servicer` puts on the server at 127.0.0.1:port (TLS
    with `credentials`) until the block ends."""
    server = grpc.aio.server()
    add_servicer(server)
    if credentials is None:
        server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    try:
        yield
    finally:
        await server.stop(grace=0.5)
