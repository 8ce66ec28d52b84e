"""Sealing tenants' channel credentials at rest (ports.SecretBox)."""

from adapters.secrets.aes_gcm import AesGcmSecretBox

__all__ = ["AesGcmSecretBox"]
