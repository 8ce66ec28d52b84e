"""Client channels to the platform's other gRPC services (the MCP engine,
the Security Hub): plaintext, or TLS verified against given roots."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from cryptography import x509


def client_channel(
    target: str,
    *,
    options: Sequence[tuple[str, int | str]],
    tls: bool = False,
    root_certificates: bytes | None = None,
    whose: str,
) -> grpc.aio.Channel:
    """A channel to `target`; with `tls`, only to a server whose certificate
    `root_certificates` (PEM; None: the system's roots) vouch for. `whose`
    names the service in errors ("the engine's")."""
    if root_certificates is not None:
        # Refused at start-up: grpc would only fail each call, the service
        # looking merely unreachable.
        try:
            x509.load_pem_x509_certificates(root_certificates)
        except ValueError:
            raise ValueError(f"{whose} CA file holds no PEM certificate") from None
    if tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.aio.secure_channel(target, credentials, options=options)
    return grpc.aio.insecure_channel(target, options=options)
