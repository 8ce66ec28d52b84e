"""The platform's Security Hub over gRPC (SECURITY_HUB_URL)."""

from adapters.security_hub.grpc_hub import GrpcSecurityHub

__all__ = ["GrpcSecurityHub"]
