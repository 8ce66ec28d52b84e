"""The baseline: a bare grpc.aio echo server, no interceptors, no generated code.

`python -m bench.echo_server` binds 127.0.0.1 on a port the OS picks, writes
that port on stdout once it serves (so the parent needs no free-port guess
and no polling), and stops on SIGTERM. Both methods work on raw bytes: with
no (de)serializers gRPC hands the handlers the wire bytes as they are, which
is the cheapest identity there is and keeps protobuf out of the baseline.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import grpc

SERVICE = "bench.Echo"
UNARY = "Unary"
BIDI = "Bidi"
UNARY_METHOD = f"/{SERVICE}/{UNARY}"
BIDI_METHOD = f"/{SERVICE}/{BIDI}"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _echo_each(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def echo_handler() -> grpc.GenericRpcHandler[bytes, bytes]:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            UNARY: grpc.unary_unary_rpc_method_handler(_echo),
            BIDI: grpc.stream_stream_rpc_method_handler(_echo_each),
        },
    )


async def serve() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    await stopping.wait()
    await server.stop(grace=None)


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
