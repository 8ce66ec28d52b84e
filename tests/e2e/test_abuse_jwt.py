"""Abuse suite: forged and odd JWTs.

The module's service verifies tokens as production does, against configured
keys: an EC P-256 public key (ES256) and an HS256 secret. Forgeries (alg
none, HMAC keyed with the public key, other keys and algorithms, tampered
parts) claim the victim tenant and must be UNAUTHENTICATED; tokens signed
with the right key but with odd claims (times of 10**400, NaN, strings,
wrong claim types, deep JSON) must be UNAUTHENTICATED or, where the claim
is merely unusual, PERMISSION_DENIED or served. Never INTERNAL, never a hang.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from tests.support.abuse import (
    AbuseTarget,
    Code,
    attempt,
    check,
    fuzz_settings,
)
from tests.support.abuse_inputs import b64url, nested_json
from tests.support.grpc_client import Metadata, bearer
from tests.support.service import ServiceStore

# Refused or decided before the store is touched: the MongoDB pass of
# `make test` leaves this module out (see the marker in pyproject.toml).
pytestmark = pytest.mark.store_independent

ISSUER = "abuse-issuer"
AUDIENCE = "chat-service"
SCOPES = "chat:read chat:write"
DENIED = frozenset({Code.UNAUTHENTICATED})


@dataclass(frozen=True)
class Keys:
    """What the server trusts (`trusted`, `secret`), and what it must not."""

    trusted: ec.EllipticCurvePrivateKey
    secret: bytes
    other_ec: ec.EllipticCurvePrivateKey
    ed: ed25519.Ed25519PrivateKey
    rsa: rsa.RSAPrivateKey

    @classmethod
    def make(cls) -> Keys:
        return cls(
            trusted=ec.generate_private_key(ec.SECP256R1()),
            secret=secrets.token_bytes(48),
            other_ec=ec.generate_private_key(ec.SECP256R1()),
            ed=ed25519.Ed25519PrivateKey.generate(),
            rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )

    def public_pem(self) -> bytes:
        return self.trusted.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_der(self) -> bytes:
        return self.trusted.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def claims_for(tenant_id: str, /, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "abuser",
        "tenant_id": tenant_id,
        "scope": SCOPES,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    for name, value in overrides.items():
        if value is _ABSENT:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


_ABSENT = object()


def _json(part: bytes | dict[str, Any] | list[Any]) -> bytes:
    return part if isinstance(part, bytes) else json.dumps(part).encode()


def jws(
    header: bytes | dict[str, Any], payload: bytes | dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A compact JWS of raw parts (raw bytes let a test write JSON that
    json.dumps would not: 10**400, NaN, duplicate keys)."""
    signing_input = f"{b64url(_json(header))}.{b64url(_json(payload))}".encode()
    return f"{signing_input.decode()}.{b64url(sign(signing_input))}"


def es256(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def eddsa(key: ed25519.Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    return key.sign


def rs256(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def unsigned(data: bytes) -> bytes:
    return b""


def es_header(**fields: Any) -> dict[str, Any]:
    return {"alg": "ES256", "typ": "JWT", **fields}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.make()


@pytest.fixture(scope="module")
def target(
    keys: Keys, service_store: ServiceStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AbuseTarget]:
    env = {
        "JWT_PUBLIC_KEY": keys.public_pem().decode(),
        "JWT_SECRET": keys.secret.hex(),
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": AUDIENCE,
    }

    def mint(tenant_id: str, scopes: Any) -> str:
        scope = SCOPES if scopes is None else " ".join(scopes)
        return jws(es_header(), claims_for(tenant_id, scope=scope), es256(keys.trusted))

    target = AbuseTarget.start(tmp_path_factory.mktemp("abuse-jwt"), env, mint=mint)
    yield target
    target.close()


def secret_of(keys: Keys) -> bytes:
    # The server reads JWT_SECRET as text: the hex digits are the key.
    return keys.secret.hex().encode()


# ------------------------------------------------------------------ forgeries

Forgery = Callable[[Keys, str], str]


def _good(keys: Keys, tenant: str) -> str:
    return jws(es_header(), claims_for(tenant), es256(keys.trusted))


def _swap_payload(keys: Keys, tenant: str) -> str:
    """A genuine token of another tenant, its payload replaced."""
    header, _, signature = _good(keys, "someone-else").split(".")
    return f"{header}.{b64url(_json(claims_for(tenant)))}.{signature}"


def _flip_signature(keys: Keys, tenant: str) -> str:
    header, payload, signature = _good(keys, tenant).split(".")
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    return f"{header}.{payload}.{flipped}"


def _attacker_jwk(keys: Keys, tenant: str) -> str:
    numbers = keys.other_ec.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }
    return jws(es_header(jwk=jwk), claims_for(tenant), es256(keys.other_ec))


FORGERIES: dict[str, Forgery] = {
    "alg-none": lambda k, t: jws({"alg": "none"}, claims_for(t), unsigned),
    "alg-None": lambda k, t: jws({"alg": "None"}, claims_for(t), unsigned),
    "alg-NONE": lambda k, t: jws({"alg": "NONE"}, claims_for(t), unsigned),
    "alg-none-with-signature": lambda k, t: jws({"alg": "none"}, claims_for(t), es256(k.trusted)),
    "alg-empty": lambda k, t: jws({"alg": ""}, claims_for(t), unsigned),
    "alg-missing": lambda k, t: jws({"typ": "JWT"}, claims_for(t), es256(k.trusted)),
    "alg-null": lambda k, t: jws({"alg": None}, claims_for(t), es256(k.trusted)),
    "alg-list": lambda k, t: jws({"alg": ["ES256"]}, claims_for(t), es256(k.trusted)),
    "alg-number": lambda k, t: jws({"alg": 256}, claims_for(t), es256(k.trusted)),
    "hs256-keyed-with-public-pem": lambda k, t: jws(
        {"alg": "HS256"}, claims_for(t), hs256(k.public_pem())
    ),
    "hs256-keyed-with-public-der": lambda k, t: jws(
        {"alg": "HS256"}, claims_for(t), hs256(k.public_der())
    ),
    "hs256-keyed-with-nothing": lambda k, t: jws({"alg": "HS256"}, claims_for(t), hs256(b"")),
    "hs256-kid-traversal": lambda k, t: jws(
        {"alg": "HS256", "kid": "../../../../dev/null"}, claims_for(t), hs256(b"")
    ),
    "hs384-keyed-with-secret": lambda k, t: jws(
        {"alg": "HS384"},
        claims_for(t),
        lambda d: hmac.new(secret_of(k), d, hashlib.sha384).digest(),
    ),
    "es256-another-key": lambda k, t: jws(es_header(), claims_for(t), es256(k.other_ec)),
    "es256-header-eddsa-signature": lambda k, t: jws(es_header(), claims_for(t), eddsa(k.ed)),
    "eddsa-not-configured": lambda k, t: jws({"alg": "EdDSA"}, claims_for(t), eddsa(k.ed)),
    "eddsa-header-es256-signature": lambda k, t: jws(
        {"alg": "EdDSA"}, claims_for(t), es256(k.trusted)
    ),
    "es384-header-es256-signature": lambda k, t: jws(
        {"alg": "ES384"}, claims_for(t), es256(k.trusted)
    ),
    "es512-header-es256-signature": lambda k, t: jws(
        {"alg": "ES512"}, claims_for(t), es256(k.trusted)
    ),
    "rs256-own-key": lambda k, t: jws({"alg": "RS256"}, claims_for(t), rs256(k.rsa)),
    "ps256-header": lambda k, t: jws({"alg": "PS256"}, claims_for(t), rs256(k.rsa)),
    "attacker-jwk-in-header": _attacker_jwk,
    "jku-in-header": lambda k, t: jws(
        es_header(jku="https://attacker.example/jwks.json"), claims_for(t), es256(k.other_ec)
    ),
    "payload-swapped": _swap_payload,
    "signature-flipped": _flip_signature,
    "signature-truncated": lambda k, t: _good(k, t)[:-10],
    "signature-empty": lambda k, t: _good(k, t).rsplit(".", 1)[0] + ".",
    "signature-der-encoded": lambda k, t: jws(
        es_header(), claims_for(t), lambda d: k.trusted.sign(d, ec.ECDSA(hashes.SHA256()))
    ),
    "two-parts": lambda k, t: _good(k, t).rsplit(".", 1)[0],
    "four-parts": lambda k, t: _good(k, t) + ".AAAA",
    "five-parts-jwe": lambda k, t: ".".join(["eyJhbGciOiJkaXIifQ", "", "AAAA", "AAAA", "AAAA"]),
    "parts-not-base64": lambda k, t: "!!!.@@@.###",
    "parts-with-padding": lambda k, t: ".".join(p + "==" for p in _good(k, t).split(".")),
    # (Not the standard base64 alphabet: where only the signature has "-" or
    # "_", that decodes to the same genuine token.)
    "header-not-json": lambda k, t: jws(b"not json", claims_for(t), es256(k.trusted)),
    "header-a-list": lambda k, t: jws(b'["ES256"]', claims_for(t), es256(k.trusted)),
    "header-invalid-utf8": lambda k, t: jws(b'{"alg":"\xff"}', claims_for(t), es256(k.trusted)),
    "header-nested-2000": lambda k, t: jws(
        b'{"alg":"ES256","x":' + nested_json(2000) + b"}", claims_for(t), es256(k.other_ec)
    ),
    "header-nested-2000-unsigned": lambda k, t: jws(nested_json(2000), b"{}", unsigned),
    "payload-nested-2000-unsigned": lambda k, t: jws(es_header(), nested_json(2000), unsigned),
    "payload-nested-2000-wrong-key": lambda k, t: jws(
        es_header(), b'{"tenant_id":' + nested_json(2000) + b"}", es256(k.other_ec)
    ),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_tokens_are_unauthenticated(target: AbuseTarget, keys: Keys, forgery: str) -> None:
    victim = target.victim
    token = FORGERIES[forgery](keys, victim.tenant.id)
    request = pb.GetConversationRequest(conversation_id=victim.conversation_id)

    check(
        attempt(target.stub.GetConversation, request, bearer(token)),
        DENIED,
        case=f"token {forgery}",
        secrets=[victim.secret],
    )


# ------------------------------------------------------------------ odd claims, signed

HUGE = b"1" + b"0" * 400  # 10**400 in raw JSON
# (claim, raw JSON value, allowed codes)
ODD_CLAIMS: list[tuple[str, bytes, frozenset[Code]]] = [
    ("exp", HUGE, DENIED),
    ("exp", b"-" + HUGE, DENIED),
    ("exp", b"1e400", DENIED),
    ("exp", b"-1e400", DENIED),
    ("exp", b"NaN", DENIED),
    ("exp", b"Infinity", DENIED),
    ("exp", b"100000000000000000000", DENIED),
    ("exp", b'"9999999999"', DENIED),
    ("exp", b"true", DENIED),
    ("exp", b"[]", DENIED),
    ("exp", b"{}", DENIED),
    ("exp", b"null", DENIED),
    ("exp", b"0", DENIED),
    ("nbf", HUGE, DENIED),
    ("nbf", b"1e400", DENIED),
    ("nbf", b"NaN", DENIED),
    ("nbf", b'"0"', DENIED),
    ("nbf", b"[]", DENIED),
    ("nbf", b"-" + HUGE, frozenset({Code.OK, Code.UNAUTHENTICATED})),
    ("iat", HUGE, DENIED),
    ("iat", b"1e400", DENIED),
    ("iat", b"NaN", DENIED),
    ("iat", b"{}", DENIED),
    ("iat", b'"yesterday"', DENIED),
    ("iat", b"-" + HUGE, frozenset({Code.OK, Code.UNAUTHENTICATED})),
    ("tenant_id", b'["a", "b"]', DENIED),
    ("tenant_id", b"42", DENIED),
    ("tenant_id", b'{"id": "x"}', DENIED),
    ("tenant_id", b"null", DENIED),
    ("tenant_id", b"true", DENIED),
    ("tenant_id", b'""', DENIED),
    ("tenant_id", b'"a/b"', DENIED),
    ("tenant_id", b'"tenant\\u0000"', DENIED),
    ("tenant_id", b'"' + b"t" * 300 + b'"', DENIED),
    ("tenant_id", b'"t\\u00e9nant"', DENIED),
    ("tenant_id", nested_json(2000), DENIED),
    ("iss", b'["abuse-issuer"]', DENIED),
    ("iss", b"42", DENIED),
    ("iss", b'"someone-else"', DENIED),
    ("aud", b"42", DENIED),
    ("aud", b"[42, null]", DENIED),
    ("aud", b'{"aud": "chat-service"}', DENIED),
    ("aud", b'"chat-service-evil"', DENIED),
    ("aud", b'["other", "chat-service"]', frozenset({Code.OK})),
    ("scope", b'["chat:read", "chat:write"]', frozenset({Code.OK})),
    ("scope", b"42", frozenset({Code.PERMISSION_DENIED, Code.UNAUTHENTICATED})),
    ("scope", b'{"chat:read": true}', frozenset({Code.PERMISSION_DENIED, Code.UNAUTHENTICATED})),
    ("scope", b'[["chat:read"]]', frozenset({Code.PERMISSION_DENIED, Code.UNAUTHENTICATED})),
    ("scope", b"null", frozenset({Code.PERMISSION_DENIED, Code.UNAUTHENTICATED})),
    ("scope", b'"chat:read\\u0000chat:write"', frozenset({Code.PERMISSION_DENIED})),
    ("scope", b'"CHAT:READ CHAT:WRITE"', frozenset({Code.PERMISSION_DENIED})),
    ("scope", nested_json(2000), DENIED | {Code.PERMISSION_DENIED}),
    ("sub", b"42", frozenset({Code.OK, Code.UNAUTHENTICATED})),
    ("sub", b'"' + b"s" * 4000 + b'"', frozenset({Code.OK, Code.UNAUTHENTICATED})),
]


def _with_raw_claim(claims: dict[str, Any], name: str, raw: bytes) -> bytes:
    """The claims as JSON, with `name` set to the raw JSON `raw`."""
    rest = {key: value for key, value in claims.items() if key != name}
    body = json.dumps(rest).encode()
    return body[:-1] + b', "' + name.encode() + b'": ' + raw + b"}"


@pytest.mark.parametrize(
    ("claim", "raw", "allowed"),
    ODD_CLAIMS,
    ids=[f"{claim}-{raw[:24].decode(errors='replace')}" for claim, raw, _ in ODD_CLAIMS],
)
def test_odd_claims_signed_with_the_right_key(
    target: AbuseTarget, keys: Keys, claim: str, raw: bytes, allowed: frozenset[Code]
) -> None:
    tenant = target.tenant(f"claims-{claim}")
    payload = _with_raw_claim(claims_for(tenant.id), claim, raw)
    for sign_with, header in (
        (es256(keys.trusted), es_header()),
        (hs256(secret_of(keys)), {"alg": "HS256"}),
    ):
        token = jws(header, payload, sign_with)
        check(
            attempt(target.stub.ListConversations, pb.ListConversationsRequest(), bearer(token)),
            allowed,
            case=f"{header['alg']} token with {claim}={raw[:40]!r}",
        )


@pytest.mark.parametrize("claim", ["exp", "tenant_id", "iss", "aud"])
def test_a_missing_claim_is_unauthenticated(target: AbuseTarget, keys: Keys, claim: str) -> None:
    token = jws(es_header(), claims_for("tenant-x", **{claim: _ABSENT}), es256(keys.trusted))
    check(
        attempt(target.stub.ListConversations, pb.ListConversationsRequest(), bearer(token)),
        DENIED,
        case=f"no {claim}",
    )


def test_the_right_keys_are_accepted(target: AbuseTarget, keys: Keys) -> None:
    """The control: both configured algorithms work, so refusals above are meaningful."""
    tenant = target.tenant("control")
    for token in (
        jws(es_header(), claims_for(tenant.id), es256(keys.trusted)),
        jws({"alg": "HS256", "typ": "JWT"}, claims_for(tenant.id), hs256(secret_of(keys))),
    ):
        check(
            attempt(target.stub.ListConversations, pb.ListConversationsRequest(), bearer(token)),
            {Code.OK},
            case="a genuine token",
        )


# ------------------------------------------------------------------ the metadata itself


def test_odd_authorization_metadata(target: AbuseTarget, keys: Keys) -> None:
    tenant = target.tenant("metadata")
    good = jws(es_header(), claims_for(tenant.id), es256(keys.trusted))
    victim_header = ("x-tenant-id", target.victim.tenant.id)
    cases: list[tuple[str, Metadata, frozenset[Code]]] = [
        ("no metadata", (), DENIED),
        ("empty", (("authorization", ""),), DENIED),
        ("scheme only", (("authorization", "Bearer"),), DENIED),
        ("scheme and blanks", (("authorization", "Bearer    "),), DENIED),
        ("basic", (("authorization", "Basic dXNlcjpwYXNz"),), DENIED),
        ("token without scheme", (("authorization", good),), DENIED),
        ("lower-case scheme", (("authorization", f"bearer {good}"),), frozenset({Code.OK})),
        ("two tokens", (("authorization", f"Bearer {good}"),) * 2, DENIED),
        ("token then garbage", (("authorization", f"Bearer {good} extra"),), DENIED),
        (
            "another tenant's header",
            bearer(good, victim_header),
            frozenset({Code.PERMISSION_DENIED}),
        ),
        (
            "tenant header twice",
            bearer(good, ("x-tenant-id", tenant.id), victim_header),
            frozenset({Code.PERMISSION_DENIED}),
        ),
        (
            "empty tenant header",
            bearer(good, ("x-tenant-id", "")),
            frozenset({Code.PERMISSION_DENIED}),
        ),
        ("7 KB of garbage", bearer("a" * 7000), DENIED),
    ]
    for name, metadata, allowed in cases:
        check(
            attempt(target.stub.ListConversations, pb.ListConversationsRequest(), metadata),
            allowed,
            case=name,
            secrets=[target.victim.secret],
        )


@pytest.mark.parametrize("size", [9_000, 20_000, 100_000, 1_000_000])
def test_enormous_tokens_are_refused(target: AbuseTarget, keys: Keys, size: int) -> None:
    """Past gRPC's metadata limit the transport refuses the call (its own
    RESOURCE_EXHAUSTED); under it the verifier does. Either way: clear."""
    padding_claim = {"pad": "x" * size}
    token = jws(
        es_header(), claims_for(target.victim.tenant.id, **padding_claim), es256(keys.other_ec)
    )
    check(
        attempt(target.stub.ListConversations, pb.ListConversationsRequest(), bearer(token)),
        DENIED | {Code.RESOURCE_EXHAUSTED},
        case=f"a {size}-byte token",
    )
    target.assert_healthy()


# ------------------------------------------------------------------ property-based

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
CLAIM_NAMES = ["exp", "nbf", "iat", "tenant_id", "scope", "scp", "iss", "aud", "sub", "jti"]


@fuzz_settings(max_examples=60)
@given(
    overrides=st.dictionaries(st.sampled_from(CLAIM_NAMES), json_values, min_size=1, max_size=3),
    header_extra=st.dictionaries(
        st.sampled_from(["typ", "kid", "cty", "crit", "x5u"]), json_values, max_size=2
    ),
)
def test_any_claims_signed_with_the_right_key_get_a_clear_answer(
    target: AbuseTarget, keys: Keys, overrides: dict[str, Any], header_extra: dict[str, Any]
) -> None:
    tenant_id = f"fuzz-{uuid.uuid4().hex[:10]}"
    token = jws(es_header(**header_extra), claims_for(tenant_id, **overrides), es256(keys.trusted))
    outcome = check(
        attempt(target.stub.ListConversations, pb.ListConversationsRequest(), bearer(token)),
        {Code.OK, Code.UNAUTHENTICATED, Code.PERMISSION_DENIED},
        case=f"claims {overrides} header {header_extra}",
        secrets=[target.victim.secret],
    )
    if outcome.code is Code.OK:
        # Whoever it is, it is not the victim.
        listed = {c.conversation_id for c in outcome.response.conversations}
        assert target.victim.conversation_id not in listed


@fuzz_settings(max_examples=40)
@given(
    token=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=300
    )
)
def test_any_printable_garbage_is_unauthenticated(target: AbuseTarget, token: str) -> None:
    check(
        attempt(target.stub.ListConversations, pb.ListConversationsRequest(), bearer(token)),
        DENIED,
        case=f"token {token!r}",
    )


def test_zz_the_service_is_unharmed(target: AbuseTarget) -> None:
    target.final_checks()
