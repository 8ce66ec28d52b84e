"""Who is calling: JWT verification, and the development signing key.

Callers present a JWT; its `tenant_id` claim is the tenant they act for and
its scopes (`scope`, space-separated, or `scp`, a list) what they may do.
Every failure is `Unauthenticated` with a reason saying what was wrong and a
message that never repeats the token.

With JWT_JWKS_URL the keys are the identity provider's published ones,
looked up by the token's `kid` (adapters/jwks/ fetches and refreshes them),
so keys rotate without a restart. With SECURITY_HUB_URL no token is
verified here at all: hub_auth.py asks the Security Hub instead. Either
way the gRPC interceptor sees an `Authenticator`.

Without configured keys the service makes a development key at start-up
(`load_or_create_dev_key`) and the `token` command mints tokens with it;
when MONGODB_URI or REDIS_URL is set (a production shape) both refuse to
unless JWT_DEV_KEY=allow. Whatever a token holds (huge or odd time claims,
claims of the wrong type, nested JSON, unknown algorithms, megabytes), the
verifier answers Unauthenticated, never another exception.
Blocking file I/O here is deliberate: it runs once, before serving.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chat_service.domain.errors import PermissionDenied, Unauthenticated
from chat_service.key_files import load_or_create
from chat_service.ports import SigningKeys

logger = logging.getLogger(__name__)

SCOPE_READ = "chat:read"
SCOPE_WRITE = "chat:write"
# Managing channel connections: tenants' platform credentials.
SCOPE_ADMIN = "chat:admin"

DEV_ISSUER = "chat-service-dev"
TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEV_KEY_FILENAME = "dev-jwt-ed25519.pem"
# The development key is for one developer's embedded service, who also
# connects its channels: its tokens may do everything.
DEV_SCOPES = frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN})
# Verified tokens remembered (see JwtVerifier.verify); each entry is small.
VERIFIED_TOKENS_CACHED = 10_000

# HS256 keys shorter than the hash are brute-forceable (RFC 7518, 3.2).
MIN_HS256_SECRET_BYTES = 32

# Real tokens are well under 2 KB (and gRPC's default metadata limit is 8 KB):
# anything longer is refused before it is decoded.
MAX_TOKEN_LENGTH = 8192
# NumericDates (RFC 7519, 2) beyond year 9999 are no dates: refused, rather
# than trusted forever or overflowing a float.
MAX_NUMERIC_DATE = 253_402_300_800

# ErrorInfo reasons of the Unauthenticated errors (names, not secrets: S105).
TOKEN_MISSING = "TOKEN_MISSING"  # noqa: S105
TOKEN_EXPIRED = "TOKEN_EXPIRED"  # noqa: S105
TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID"  # noqa: S105
TOKEN_INVALID = "TOKEN_INVALID"  # noqa: S105
TOKEN_WRONG_ISSUER = "TOKEN_WRONG_ISSUER"  # noqa: S105
TOKEN_WRONG_AUDIENCE = "TOKEN_WRONG_AUDIENCE"  # noqa: S105
TENANT_CLAIM_MISSING = "TENANT_CLAIM_MISSING"
TENANT_CLAIM_INVALID = "TENANT_CLAIM_INVALID"
TOKEN_KEY_UNKNOWN = "TOKEN_KEY_UNKNOWN"  # noqa: S105
# PermissionDenied reason: the token lacks the method's scope.
INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"

# What a key from a JWKS may verify: asymmetric algorithms only (a JWKS is
# public: an HMAC key in it would let anyone sign).
JWKS_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})

_VerificationKey: TypeAlias = (
    ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey | bytes
)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    tenant_id: str
    subject: str
    scopes: frozenset[str]
    # When the token stops being accepted (epoch seconds: `exp` plus the
    # leeway); long-lived calls end then. None: never (tests, tools).
    valid_until: float | None = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class Authenticator(Protocol):
    """Who is calling, and whether they may: what the gRPC interceptor
    asks of JwtVerifier (local keys or a JWKS) or of the Security Hub."""

    async def authenticate(self, token: str) -> Principal:
        """The caller `token` stands for; Unauthenticated if none, or
        Unavailable when that cannot be known right now."""
        ...

    async def authorize(self, principal: Principal, scope: str, method: str) -> None:
        """PermissionDenied unless `principal` may call `method` (full gRPC
        name), which needs `scope`; Unavailable when that cannot be known."""
        ...


def require_scope(principal: Principal, scope: str) -> None:
    if not principal.has_scope(scope):
        raise PermissionDenied(
            f"this method needs the scope {scope!r}",
            reason=INSUFFICIENT_SCOPE,
            metadata={"required_scope": scope},
        )


class JwtVerifier:
    """Verifies bearer tokens against configured keys.

    Keys: a PEM public key (Ed25519 for EdDSA, P-256 for ES256, RSA for
    RS256) and/or an HS256 secret; or, instead of both, `signing_keys` (a
    JWKS), where each token's `kid` names its key (only `authenticate`
    verifies those: the key may have to be fetched). `algorithms` limits
    what is accepted (default: what the keys allow; with a JWKS, RS256,
    ES256 and EdDSA); each algorithm is checked with its own
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
        signing_keys: SigningKeys | None = None,
    ) -> None:
        if not 0 <= leeway_seconds < MAX_NUMERIC_DATE:  # NaN fails too
            raise ValueError("the JWT leeway must be a finite number of seconds, not negative")
        self._signing_keys = signing_keys
        # Keyed by the token's digest: tokens can be kilobytes long. With a
        # JWKS each entry remembers the key set's generation it was checked
        # with: a token whose key was withdrawn must fail at once.
        self._verified: dict[bytes, tuple[Principal, float, int]] = {}
        self._issuer = issuer or None
        self._audience = audience or None
        self._leeway = leeway_seconds
        self._keys: Mapping[str, _VerificationKey] = {}
        keys: dict[str, _VerificationKey] = {}
        if signing_keys is not None:
            if public_key_pem or secret:
                raise ValueError("a JWKS cannot be combined with a public key or a secret")
            unusable = sorted(set(algorithms) - JWKS_ALGORITHMS)
            if unusable:
                raise ValueError(
                    f"JWT algorithm(s) {', '.join(unusable)} cannot be verified with a JWKS "
                    f"(it serves {', '.join(sorted(JWKS_ALGORITHMS))})"
                )
            self._jwks_algorithms = frozenset(algorithms) or JWKS_ALGORITHMS
            return
        self._jwks_algorithms = frozenset()
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
        self._keys = keys

    @property
    def algorithms(self) -> frozenset[str]:
        return self._jwks_algorithms or frozenset(self._keys)

    async def authenticate(self, token: str) -> Principal:
        if self._signing_keys is None:
            return self.verify(token)
        self._signing_keys.keep_fresh()
        generation = self._signing_keys.generation
        digest = checked_token_digest(token)
        principal = self._remembered(digest, generation)
        if principal is not None:
            return principal
        algorithm, kid = self._header(token, self._jwks_algorithms)
        if not isinstance(kid, str) or not kid:
            raise _invalid("the token names no signing key (kid)")
        found = await self._signing_keys.key(kid)
        if found is None:
            # Checked against a fresh key set unless one was fetched just
            # now (rate-limited): an old or made-up key id.
            raise Unauthenticated(
                "the token's signing key (kid) is not one the identity provider publishes",
                reason=TOKEN_KEY_UNKNOWN,
            )
        key_algorithm, key = found
        if key_algorithm != algorithm:
            raise _invalid("the token's signing algorithm is not its key's")
        claims = self._claims_signed_by(token, algorithm, key)
        return self._principal_of(claims, digest, generation)

    async def authorize(self, principal: Principal, scope: str, method: str) -> None:
        require_scope(principal, scope)

    def verify(self, token: str) -> Principal:
        """The caller of `token`, checked with the configured keys (not a JWKS)."""
        if self._signing_keys is not None:
            raise RuntimeError("a JWKS verifier verifies with authenticate()")
        digest = checked_token_digest(token)
        principal = self._remembered(digest, 0)
        if principal is not None:
            return principal
        return self._principal_of(self._verified_claims(token), digest, 0)

    def _remembered(self, digest: bytes, generation: int) -> Principal | None:
        # A client sends the same token with every call: checking a signature
        # each time costs more than the rest of authentication, so verified
        # tokens are remembered until they expire (a token cannot change).
        cached = self._verified.get(digest)
        if cached is None:
            return None
        principal, expires, checked_with = cached
        if checked_with == generation and time.time() <= expires + self._leeway:
            return principal
        del self._verified[digest]
        return None

    def _principal_of(self, claims: Mapping[str, Any], digest: bytes, generation: int) -> Principal:
        expires = self._checked_times(claims)
        tenant_id = claims.get("tenant_id")
        if tenant_id is None or tenant_id == "":
            raise Unauthenticated("the token has no tenant_id claim", reason=TENANT_CLAIM_MISSING)
        if not isinstance(tenant_id, str) or not TENANT_ID_PATTERN.fullmatch(tenant_id):
            # Tenant ids become parts of store and Redis keys ("tenant/id"):
            # a "/" or an unbounded length would let one tenant's keys collide
            # with another's.
            raise Unauthenticated(
                "the token's tenant_id is not a valid tenant id", reason=TENANT_CLAIM_INVALID
            )
        subject = claims.get("sub", "")
        if not isinstance(subject, str):
            raise _invalid("the token's sub claim is not a string")
        principal = Principal(
            tenant_id=tenant_id,
            subject=subject,
            scopes=_scopes_of(claims),
            valid_until=expires + self._leeway,
        )
        if len(self._verified) >= VERIFIED_TOKENS_CACHED:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[digest] = (principal, expires, generation)
        return principal

    def _checked_times(self, claims: Mapping[str, Any]) -> float:
        """`exp`, after checking it and `nbf` and `iat` against the clock.

        Checked here rather than by PyJWT, which takes numbers in strings
        ("exp": "1900000000"), booleans and dates past any calendar.
        """
        now = time.time()
        expires = _numeric_date(claims, "exp")
        if expires is None:
            raise _invalid("the token has no exp claim")
        if expires <= now - self._leeway:
            raise Unauthenticated("the token has expired", reason=TOKEN_EXPIRED)
        for name in ("nbf", "iat"):
            start = _numeric_date(claims, name)
            if start is not None and start > now + self._leeway:
                raise Unauthenticated("the token is not valid yet", reason=TOKEN_NOT_YET_VALID)
        return expires

    def _verified_claims(self, token: str) -> dict[str, Any]:
        algorithm, _ = self._header(token, self._keys)
        return self._claims_signed_by(token, algorithm, self._keys[algorithm])

    @staticmethod
    def _header(token: str, accepted: Collection[str]) -> tuple[str, object]:
        """The token's algorithm, if `accepted`, and its key id (unchecked)."""
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise _invalid("the token is malformed") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in accepted:
            raise _invalid("the token's signing algorithm is not accepted")
        return algorithm, header.get("kid")

    def _claims_signed_by(self, token: str, algorithm: str, key: Any) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                options={
                    "require": ["exp"],
                    "verify_aud": self._audience is not None,
                    # Times are checked by _checked_times.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
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
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError) as error:
            # Whatever PyJWT cannot digest is an invalid token, never a crash.
            # Its messages name the check that failed, never the token.
            logger.debug("token rejected: %s", error)
            raise _invalid("the token's signature or claims are invalid") from None


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=TOKEN_INVALID)


def checked_token_digest(token: str) -> bytes:
    """The token's digest, once it is known to be neither empty nor huge."""
    if not token:
        raise Unauthenticated("a bearer token is required", reason=TOKEN_MISSING)
    if len(token) > MAX_TOKEN_LENGTH:
        raise _invalid(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A time claim as epoch seconds: a JSON number within years ±9999."""
    if name not in claims:
        return None
    value = claims[name]
    # NaN fails every comparison, so the range check refuses it too.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not -MAX_NUMERIC_DATE < value < MAX_NUMERIC_DATE
    ):
        raise _invalid(f"the token's {name} claim is not a date")
    return float(value)


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
    """Load `data_dir/dev-jwt-ed25519.pem`, creating it (mode 0600) if absent;
    processes starting together all end up with one key (key_files.py)."""
    path = data_dir / DEV_KEY_FILENAME
    pem = load_or_create(path, _new_private_key_pem, what="development JWT key")
    return DevKey(_load_private_key(pem, path), path)


def _new_private_key_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


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
