"""Who is calling: JWT verification, and the development signing key.

Callers present a JWT; its `tenant_id` claim is the tenant they act for and
its scopes (`scope`, space-separated, or `scp`, a list) what they may do.
Every failure is `Unauthenticated` with a reason saying what was wrong and a
message that never repeats the token.

Without configured keys the service makes a development key at start-up
(`load_or_create_dev_key`) and the `token` command mints tokens with it.
Blocking file I/O here is deliberate: it runs once, before serving.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chat_service.domain.errors import Unauthenticated

logger = logging.getLogger(__name__)

SCOPE_READ = "chat:read"
SCOPE_WRITE = "chat:write"

DEV_ISSUER = "chat-service-dev"
TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEV_KEY_FILENAME = "dev-jwt-ed25519.pem"
DEV_SCOPES = frozenset({SCOPE_READ, SCOPE_WRITE})
# Verified tokens remembered (see JwtVerifier.verify); each entry is small.
VERIFIED_TOKENS_CACHED = 10_000

# HS256 keys shorter than the hash are brute-forceable (RFC 7518, 3.2).
MIN_HS256_SECRET_BYTES = 32

# ErrorInfo reasons of the Unauthenticated errors (names, not secrets: S105).
TOKEN_MISSING = "TOKEN_MISSING"  # noqa: S105
TOKEN_EXPIRED = "TOKEN_EXPIRED"  # noqa: S105
TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID"  # noqa: S105
TOKEN_INVALID = "TOKEN_INVALID"  # noqa: S105
TOKEN_WRONG_ISSUER = "TOKEN_WRONG_ISSUER"  # noqa: S105
TOKEN_WRONG_AUDIENCE = "TOKEN_WRONG_AUDIENCE"  # noqa: S105
TENANT_CLAIM_MISSING = "TENANT_CLAIM_MISSING"
TENANT_CLAIM_INVALID = "TENANT_CLAIM_INVALID"

_VerificationKey: TypeAlias = (
    ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey | bytes
)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    tenant_id: str
    subject: str
    scopes: frozenset[str]

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class JwtVerifier:
    """Verifies bearer tokens against configured keys.

    Keys: a PEM public key (Ed25519 for EdDSA, P-256 for ES256, RSA for
    RS256) and/or an HS256 secret. `algorithms` limits what is accepted
    (default: what the keys allow); each algorithm is checked with its own
    key only, so a public key can never be used as an HMAC secret. `exp` is
    required; `issuer` and `audience`, when set (non-empty), must match the
    `iss` and `aud` claims; when no audience is set, `aud` is not checked.
    `leeway_seconds` absorbs clock skew for `exp`, `nbf` and `iat`.
    """

    def __init__(
        self,
        *,
        public_key_pem: str | bytes = "",
        secret: str | bytes = "",
        algorithms: Collection[str] = (),
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: float = 0.0,
    ) -> None:
        keys: dict[str, _VerificationKey] = {}
        if public_key_pem:
            algorithm, public_key = _load_public_key(public_key_pem)
            keys[algorithm] = public_key
        if secret:
            secret_bytes = secret.encode() if isinstance(secret, str) else secret
            if len(secret_bytes) < MIN_HS256_SECRET_BYTES:
                raise ValueError(
                    f"the HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes long"
                )
            keys["HS256"] = secret_bytes
        if not keys:
            raise ValueError("a JWT verifier needs a public key or an HS256 secret")
        if algorithms:
            unusable = sorted(set(algorithms) - keys.keys())
            if unusable:
                raise ValueError(
                    f"no configured key for JWT algorithm(s) {', '.join(unusable)} "
                    f"(the keys allow {', '.join(sorted(keys))})"
                )
            keys = {name: key for name, key in keys.items() if name in algorithms}
        if leeway_seconds < 0:
            raise ValueError("the JWT leeway must not be negative")
        self._keys: Mapping[str, _VerificationKey] = keys
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._issuer = issuer or None
        self._audience = audience or None
        self._leeway = leeway_seconds

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str) -> Principal:
        if not token:
            raise Unauthenticated("a bearer token is required", reason=TOKEN_MISSING)
        # A client sends the same token with every call: checking a signature
        # each time costs more than the rest of authentication, so verified
        # tokens are remembered until they expire (a token cannot change).
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires = cached
            if time.time() <= expires + self._leeway:
                return principal
            del self._verified[token]
        claims = self._verified_claims(token)
        tenant_id = claims.get("tenant_id")
        if not isinstance(tenant_id, str) or not tenant_id:
            raise Unauthenticated("the token has no tenant_id claim", reason=TENANT_CLAIM_MISSING)
        if not TENANT_ID_PATTERN.fullmatch(tenant_id):
            # Tenant ids become parts of store and Redis keys ("tenant/id"):
            # a "/" or an unbounded length would let one tenant's keys collide
            # with another's.
            raise Unauthenticated(
                "the token's tenant_id is not a valid tenant id", reason=TENANT_CLAIM_INVALID
            )
        subject = claims.get("sub")
        principal = Principal(
            tenant_id=tenant_id,
            subject=subject if isinstance(subject, str) else "",
            scopes=_scopes_of(claims),
        )
        if len(self._verified) >= VERIFIED_TOKENS_CACHED:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = (principal, float(claims["exp"]))
        return principal

    def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise _invalid("the token is malformed") from None
        if not isinstance(algorithm, str) or algorithm not in self._keys:
            raise _invalid("the token's signing algorithm is not accepted")
        try:
            return jwt.decode(
                token,
                self._keys[algorithm],
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", reason=TOKEN_EXPIRED) from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated(
                "the token is not valid yet", reason=TOKEN_NOT_YET_VALID
            ) from None
        except jwt.InvalidIssuerError:
            raise _wrong_issuer() from None
        except jwt.InvalidAudienceError:
            raise _wrong_audience() from None
        except jwt.MissingRequiredClaimError as missing:
            if missing.claim == "iss":
                raise _wrong_issuer() from None
            if missing.claim == "aud":
                raise _wrong_audience() from None
            raise _invalid(f"the token has no {missing.claim} claim") from None
        except jwt.PyJWTError as error:
            # PyJWT's messages name the check that failed, never the token.
            logger.debug("token rejected: %s", error)
            raise _invalid("the token's signature or claims are invalid") from None


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=TOKEN_INVALID)


def _wrong_issuer() -> Unauthenticated:
    return Unauthenticated("the token's issuer is not accepted", reason=TOKEN_WRONG_ISSUER)


def _wrong_audience() -> Unauthenticated:
    return Unauthenticated("the token's audience is not accepted", reason=TOKEN_WRONG_AUDIENCE)


def _scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from `scope` and `scp`, each a space-separated string or a list.

    Malformed entries are ignored: a token can only lose scopes by them.
    """
    scopes: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(item for item in value if isinstance(item, str) and item)
    return frozenset(scopes)


def _load_public_key(pem: str | bytes) -> tuple[str, _VerificationKey]:
    """The key and the one algorithm it verifies."""
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except ValueError:
        raise ValueError("the JWT public key is not a PEM public key") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA", key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", key
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256", key
    raise ValueError("the JWT public key must be Ed25519, EC P-256 or RSA")


# ----------------------------------------------------------- development key


@dataclass(frozen=True, slots=True, eq=False)
class DevKey:
    """The development signing key (Ed25519), kept in the data directory."""

    private_key: ed25519.Ed25519PrivateKey
    path: Path

    def public_key_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verifier(self, *, leeway_seconds: float = 30.0) -> JwtVerifier:
        return JwtVerifier(
            public_key_pem=self.public_key_pem(),
            algorithms=("EdDSA",),
            issuer=DEV_ISSUER,
            leeway_seconds=leeway_seconds,
        )

    def mint(
        self,
        tenant_id: str,
        subject: str = "dev",
        scopes: Iterable[str] = DEV_SCOPES,
        ttl_seconds: int = 3600,
        issuer: str = DEV_ISSUER,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer,
            "sub": subject,
            "tenant_id": tenant_id,
            "scope": " ".join(sorted(set(scopes))),
            "iat": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.private_key, algorithm="EdDSA")


def load_or_create_dev_key(data_dir: Path) -> DevKey:
    """Load `data_dir/dev-jwt-ed25519.pem`, creating it (mode 0600) if absent.

    Creation is atomic: the key is written to a private temporary file and
    hard-linked into place, which fails if the file already exists, so that
    processes starting together all end up with the first one's key and
    none ever reads a half-written file.
    """
    path = data_dir / DEV_KEY_FILENAME
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        pem = _create_key_file(path)
    else:
        if path.stat().st_mode & 0o077:
            logger.warning("%s is readable by other users; it should be mode 0600", path)
    return DevKey(_load_private_key(pem, path), path)


def _create_key_file(path: Path) -> bytes:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # exactly 0600, whatever the umask
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_bytes()  # another process created it first
        logger.info("created the development JWT key %s", path)
        return pem
    finally:
        temporary.unlink(missing_ok=True)


def _load_private_key(pem: bytes, path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(
            f"{path} is not an unencrypted Ed25519 private key in PEM; "
            "delete it to have a new one made"
        )
    return key
