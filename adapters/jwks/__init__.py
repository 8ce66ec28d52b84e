"""The identity provider's published signing keys (JWT_JWKS_URL)."""

from adapters.jwks.key_set import JwksKeys

__all__ = ["JwksKeys"]
