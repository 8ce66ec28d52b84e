"""Client channels as production has them: several connections, callers spread over them.

Production callers come from many clients (or an edge that keeps several
connections), not down one HTTP/2 connection. By default grpc.aio channels
in one process to one address share their subchannels (one TCP connection
for all); a local subchannel pool per channel gives each its own.
https://grpc.github.io/grpc/core/group__grpc__arg__keys.html (GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc

OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


@dataclass(frozen=True, slots=True)
class Channels:
    channels: tuple[grpc.aio.Channel, ...]

    def for_caller(self, index: int) -> grpc.aio.Channel:
        """Caller `index`'s channel: callers are dealt out round-robin."""
        return self.channels[index % len(self.channels)]


@asynccontextmanager
async def open_channels(address: str, count: int) -> AsyncIterator[Channels]:
    """`count` insecure channels to `address`, each on a connection of its own."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    async with AsyncExitStack() as stack:
        opened = []
        for _ in range(count):
            channel = grpc.aio.insecure_channel(address, options=[OWN_CONNECTION])
            opened.append(await stack.enter_async_context(channel))
        yield Channels(tuple(opened))
