"""JWT verification by a JWKS endpoint (adapters/jwks/ behind JwtVerifier),
against a real local JWKS HTTP server: rotations, the refresh rate limit,
the key set's max-age, outages, and the key types taken."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from adapters.jwks import JwksKeys
from adapters.jwks.key_set import JWKS_UNAVAILABLE
from chat_service.auth import TOKEN_INVALID, TOKEN_KEY_UNKNOWN, JwtVerifier
from chat_service.domain.errors import ChatError, Unauthenticated, Unavailable
from tests.support.jwks_server import JwksServer, SigningKey

MIN_REFRESH = 30.0
MAX_AGE = 300.0
# One key of each kind for the whole module: RSA keys take a while to make.
KEY_A = SigningKey.new("key-a", "RS256")
KEY_B = SigningKey.new("key-b", "ES256")
KEY_C = SigningKey.new("key-c", "EdDSA")


class ManualClock:
    """The key set's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> Iterator[JwksServer]:
    with JwksServer(KEY_A) as running:
        yield running


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def keys(server: JwksServer, clock: ManualClock) -> AsyncIterator[JwksKeys]:
    key_set = JwksKeys(
        server.url, min_refresh_seconds=MIN_REFRESH, max_age_seconds=MAX_AGE, monotonic=clock
    )
    yield key_set
    await key_set.aclose()


def _verifier(keys: JwksKeys, **options: Any) -> JwtVerifier:
    return JwtVerifier(signing_keys=keys, **options)


async def _refused(verifier: JwtVerifier, token: str) -> ChatError:
    with pytest.raises((Unauthenticated, Unavailable)) as raised:
        await verifier.authenticate(token)
    return raised.value


async def test_a_rotation_takes_effect_without_a_restart(
    server: JwksServer, keys: JwksKeys, clock: ManualClock
) -> None:
    verifier = _verifier(keys)
    token_a = KEY_A.mint("tenant-a")
    assert (await verifier.authenticate(token_a)).tenant_id == "tenant-a"
    assert (await verifier.authenticate(token_a)).tenant_id == "tenant-a"
    assert server.requests == 1

    # The provider rotates: B replaces A.
    server.publish(KEY_B)
    clock.advance(MIN_REFRESH)
    assert (await verifier.authenticate(KEY_B.mint("tenant-b"))).tenant_id == "tenant-b"
    assert server.requests == 2

    # A was withdrawn: its tokens fail, the one verified before too.
    error = await _refused(verifier, token_a)
    assert isinstance(error, Unauthenticated)
    assert error.reason == TOKEN_KEY_UNKNOWN
    assert "kid" in error.message
    error = await _refused(verifier, KEY_A.mint("tenant-a"))
    assert error.reason == TOKEN_KEY_UNKNOWN
    assert server.requests == 2  # within the rate limit: not fetched again


async def test_unknown_key_ids_refresh_at_most_once_per_interval(
    server: JwksServer, keys: JwksKeys, clock: ManualClock
) -> None:
    verifier = _verifier(keys)
    assert (await verifier.authenticate(KEY_A.mint("t"))).tenant_id == "t"
    assert server.requests == 1

    flood = [KEY_A.mint("t", kid=f"made-up-{n}") for n in range(50)]
    errors = await asyncio.gather(*(_refused(verifier, token) for token in flood))
    assert {error.reason for error in errors} == {TOKEN_KEY_UNKNOWN}
    assert server.requests == 1

    clock.advance(MIN_REFRESH - 1)
    await _refused(verifier, flood[0])
    assert server.requests == 1
    clock.advance(1)
    # Past the interval: one refresh for the next unknown id, shared by all.
    errors = await asyncio.gather(*(_refused(verifier, token) for token in flood))
    assert {error.reason for error in errors} == {TOKEN_KEY_UNKNOWN}
    assert server.requests == 2
    assert (await verifier.authenticate(KEY_A.mint("t"))).tenant_id == "t"


async def test_a_new_key_is_found_by_the_first_token_that_names_it(
    server: JwksServer, keys: JwksKeys, clock: ManualClock
) -> None:
    # The provider adds B beside A (the first half of a rotation).
    verifier = _verifier(keys)
    await verifier.authenticate(KEY_A.mint("t"))
    server.publish(KEY_A, KEY_B)
    clock.advance(MIN_REFRESH)
    assert (await verifier.authenticate(KEY_B.mint("t"))).tenant_id == "t"
    assert (await verifier.authenticate(KEY_A.mint("t"))).tenant_id == "t"
    assert server.requests == 2


async def test_the_key_set_is_fetched_again_after_its_max_age(
    server: JwksServer, clock: ManualClock
) -> None:
    server.cache_for("public, max-age=120")
    keys = JwksKeys(server.url, min_refresh_seconds=10, max_age_seconds=3600, monotonic=clock)
    try:
        verifier = _verifier(keys)
        token_a = KEY_A.mint("t")
        await verifier.authenticate(token_a)
        server.publish(KEY_B)  # A withdrawn, and no token names B yet
        clock.advance(119)
        await verifier.authenticate(token_a)
        assert server.requests == 1

        clock.advance(1)
        # Stale: refreshed in the background, this call still answered
        # with the keys there are.
        await verifier.authenticate(token_a)
        await keys.refreshed()
        assert server.requests == 2
        assert (await _refused(verifier, token_a)).reason == TOKEN_KEY_UNKNOWN
    finally:
        await keys.aclose()


async def test_max_age_is_bounded_by_the_settings(server: JwksServer, clock: ManualClock) -> None:
    server.cache_for("max-age=86400")
    keys = JwksKeys(server.url, min_refresh_seconds=10, max_age_seconds=60, monotonic=clock)
    try:
        token = KEY_A.mint("t")
        verifier = _verifier(keys)
        await verifier.authenticate(token)
        clock.advance(60)
        await verifier.authenticate(token)
        await keys.refreshed()
        assert server.requests == 2
    finally:
        await keys.aclose()


async def test_an_unreachable_endpoint_keeps_the_cached_keys(
    server: JwksServer, keys: JwksKeys, clock: ManualClock
) -> None:
    verifier = _verifier(keys)
    token = KEY_A.mint("t")
    await verifier.authenticate(token)

    server.fail_with(503)
    clock.advance(MAX_AGE)
    assert (await verifier.authenticate(KEY_A.mint("t"))).tenant_id == "t"
    await keys.refreshed()
    assert server.requests == 2
    # An unknown key id while the endpoint fails: refused as unknown, not
    # as unavailable (the keys there are say no such key).
    clock.advance(MIN_REFRESH)
    assert (await _refused(verifier, KEY_B.mint("t"))).reason == TOKEN_KEY_UNKNOWN
    assert server.requests == 3

    server.stop()  # connection refused from now on
    clock.advance(MAX_AGE)
    assert (await verifier.authenticate(KEY_A.mint("t"))).tenant_id == "t"
    assert (await verifier.authenticate(token)).tenant_id == "t"


async def test_no_keys_at_all_is_unavailable_and_rate_limited(
    server: JwksServer, keys: JwksKeys, clock: ManualClock
) -> None:
    server.fail_with(500)
    verifier = _verifier(keys)
    for _ in range(3):
        error = await _refused(verifier, KEY_A.mint("t"))
        assert isinstance(error, Unavailable)
        assert error.reason == JWKS_UNAVAILABLE
        assert error.retry_after is not None
        assert error.retry_after > 0
    assert server.requests == 1

    server.fail_with(200)
    clock.advance(MIN_REFRESH)
    assert (await verifier.authenticate(KEY_A.mint("t"))).tenant_id == "t"
    assert server.requests == 2


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"keys": "no"}',
        b'{"keys": []}',
        b"[1, 2]",
        b'{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}',
        b"[" * 100_000,  # deeper than the JSON parser recurses
        b'{"keys": [], "padding": "' + b"x" * (2 * 1024 * 1024) + b'"}',  # over 1 MB
    ],
    ids=["not-json", "keys-not-a-list", "no-keys", "a-list", "only-hmac", "deep", "huge"],
)
async def test_a_document_with_no_usable_key_is_a_failed_fetch(
    server: JwksServer, keys: JwksKeys, body: bytes
) -> None:
    server.serve_raw(body)
    error = await _refused(_verifier(keys), KEY_A.mint("t"))
    assert isinstance(error, Unavailable)
    assert error.reason == JWKS_UNAVAILABLE
    assert server.requests == 1


@pytest.mark.parametrize(
    "entry",
    [
        {"kid": "odd", "kty": []},
        {"kid": "odd", "kty": "RSA", "alg": "none", "n": "AQAB", "e": "AQAB"},
        {"kid": "odd", "kty": "EC", "crv": ["P-256"], "x": "AA", "y": "AA"},
        {"kid": "odd", "kty": "RSA", "use": ["sig"], "n": "AQAB", "e": "AQAB"},
    ],
    ids=["kty-a-list", "alg-none", "crv-a-list", "use-a-list"],
)
async def test_an_entry_of_any_shape_is_skipped_and_the_rest_still_verify(
    server: JwksServer, keys: JwksKeys, entry: dict[str, Any]
) -> None:
    server.publish(KEY_A, extra=[entry])
    verifier = _verifier(keys)
    assert (await verifier.authenticate(KEY_A.mint("t"))).tenant_id == "t"
    assert (await _refused(verifier, KEY_A.mint("t", kid="odd"))).reason == TOKEN_KEY_UNKNOWN


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_private_keys_published_by_mistake_are_never_used(
    server: JwksServer, keys: JwksKeys
) -> None:
    # Whoever reads a published private key can sign with it; a private
    # key object cannot even verify (PyJWT would fail with AttributeError).
    weak = SigningKey("rsa-private", "RS256", rsa.generate_private_key(65537, 1024))
    signers = [
        weak,
        SigningKey("ec-private", "ES256", KEY_B.private_key),
        SigningKey("ed-private", "EdDSA", KEY_C.private_key),
    ]
    to_jwk: Any = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}
    private_entries = [
        {**json.loads(to_jwk[s.algorithm].to_jwk(s.private_key)), "kid": s.kid} for s in signers
    ]
    assert all("d" in entry for entry in private_entries)
    server.publish(KEY_A, extra=private_entries)
    verifier = _verifier(keys)
    assert (await verifier.authenticate(KEY_A.mint("t"))).tenant_id == "t"
    for signer in signers:
        assert (await _refused(verifier, signer.mint("t"))).reason == TOKEN_KEY_UNKNOWN
    assert server.requests == 1


async def test_a_caller_giving_up_does_not_abort_the_refresh_for_the_others(
    server: JwksServer, keys: JwksKeys, clock: ManualClock
) -> None:
    verifier = _verifier(keys)
    await verifier.authenticate(KEY_A.mint("t"))
    server.publish(KEY_A, KEY_B)
    clock.advance(MIN_REFRESH)
    server.hold()
    impatient = asyncio.create_task(verifier.authenticate(KEY_B.mint("t")))
    await _until(lambda: server.requests == 2)
    impatient.cancel()  # its caller's deadline passed, say
    with pytest.raises(asyncio.CancelledError):
        await impatient
    server.release()

    # The fetch went on: B is known, with no second fetch (and none allowed
    # before the rate limit's interval is over).
    assert (await verifier.authenticate(KEY_B.mint("t"))).tenant_id == "t"
    assert server.requests == 2


async def test_a_fetch_that_never_ends_fails_at_its_deadline(
    server: JwksServer, clock: ManualClock
) -> None:
    # A byte now and then: no single read waits long, the whole never ends.
    server.drip(0.05)
    keys = JwksKeys(
        server.url, min_refresh_seconds=MIN_REFRESH, timeout_seconds=0.5, monotonic=clock
    )
    try:
        async with asyncio.timeout(30):  # fails the test rather than hanging it
            error = await _refused(_verifier(keys), KEY_A.mint("t"))
        assert isinstance(error, Unavailable)
        assert error.reason == JWKS_UNAVAILABLE
    finally:
        server.drip(None)
        await keys.aclose()


async def test_rs256_es256_and_eddsa_keys_verify(server: JwksServer, keys: JwksKeys) -> None:
    server.publish(KEY_A, KEY_B, KEY_C)
    verifier = _verifier(keys)
    for key in (KEY_A, KEY_B, KEY_C):
        principal = await verifier.authenticate(key.mint(f"tenant-{key.algorithm.lower()}"))
        assert principal.tenant_id == f"tenant-{key.algorithm.lower()}"


async def test_symmetric_weak_and_foreign_entries_are_skipped(
    server: JwksServer, keys: JwksKeys
) -> None:
    weak_rsa = SigningKey.new("weak", "RS256")
    weak_entry = {
        **weak_rsa.jwk(),
        "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1Wl",
    }
    server.publish(
        KEY_C,
        extra=[
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
            weak_entry,
            {**KEY_B.jwk(), "kid": "encryption", "use": "enc"},
            {**KEY_A.jwk(), "kid": "rs512", "alg": "RS512"},
            {"kid": "garbage", "kty": "RSA", "n": "!!", "e": "AQAB"},
            "not an object",
        ],
    )
    verifier = _verifier(keys)
    assert (await verifier.authenticate(KEY_C.mint("t"))).tenant_id == "t"
    hmac_token = _hs256_token(b"secret-secret-secret-secret-secret", kid="hmac")
    assert (await _refused(verifier, hmac_token)).reason == TOKEN_INVALID
    for kid in ("weak", "encryption", "rs512", "garbage"):
        assert (await _refused(verifier, KEY_A.mint("t", kid=kid))).reason == TOKEN_KEY_UNKNOWN
    assert server.requests == 1


async def test_a_token_must_name_a_key_of_its_own_algorithm(
    server: JwksServer, keys: JwksKeys
) -> None:
    server.publish(KEY_A, KEY_C)
    verifier = _verifier(keys)
    # Signed by A (RS256) but naming C (an Ed25519 key).
    assert (await _refused(verifier, KEY_A.mint("t", kid=KEY_C.kid))).reason == TOKEN_INVALID
    # No kid at all.
    assert (await _refused(verifier, KEY_A.mint("t", kid=""))).reason == TOKEN_INVALID
    # Signed by another key under A's kid.
    impostor = SigningKey("key-a", "RS256", SigningKey.new().private_key)
    assert (await _refused(verifier, impostor.mint("t"))).reason == TOKEN_INVALID
    # ... which it also offers in the header (jwk) or by URL (jku): never
    # looked at, the key comes from the configured JWKS only.
    forged = jwt.encode(
        {"tenant_id": "t", "exp": int(time.time()) + 60},
        impostor.private_key,
        algorithm="RS256",
        headers={"kid": "key-a", "jwk": impostor.jwk(), "jku": "http://127.0.0.1:9/jwks.json"},
    )
    assert (await _refused(verifier, forged)).reason == TOKEN_INVALID
    # The classic confusions: A's public key as an HMAC secret, and "none".
    public_pem = KEY_A.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert (await _refused(verifier, _hs256_token(public_pem, kid="key-a"))).reason == (
        TOKEN_INVALID
    )
    unsigned = jwt.encode(
        {"tenant_id": "t", "exp": int(time.time()) + 60},
        "",
        algorithm="none",
        headers={"kid": "key-a"},
    )
    assert (await _refused(verifier, unsigned)).reason == TOKEN_INVALID
    assert server.requests == 1


async def test_the_allowed_algorithms_limit_the_keys(server: JwksServer, keys: JwksKeys) -> None:
    server.publish(KEY_A, KEY_C)
    verifier = _verifier(keys, algorithms=["EdDSA"])
    assert (await verifier.authenticate(KEY_C.mint("t"))).tenant_id == "t"
    assert (await _refused(verifier, KEY_A.mint("t"))).reason == TOKEN_INVALID


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://idp.internal/jwks.json", True),
        ("https://idp.internal/jwks.json", False),
        ("http://127.0.0.1:8080/jwks.json", False),
        ("http://localhost/jwks.json", False),
        ("http://[::1]:8080/jwks.json", False),
    ],
)
async def test_plain_http_to_another_host_is_warned_of(
    url: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Whoever is on the path could publish their own key: a warning, not a
    # refusal (an in-cluster provider behind a mesh's mTLS is plain http).
    keys = JwksKeys(url)
    await keys.aclose()
    warnings = [r for r in caplog.records if "plain http" in r.getMessage()]
    assert bool(warnings) is warned
    assert all(r.levelname == "WARNING" for r in warnings)


def test_a_jwks_verifier_takes_no_other_key_and_no_hmac() -> None:
    keys = JwksKeys("http://127.0.0.1:9/jwks.json")
    with pytest.raises(ValueError, match="combined"):
        JwtVerifier(signing_keys=keys, secret="s" * 40)
    with pytest.raises(ValueError, match="HS256"):
        JwtVerifier(signing_keys=keys, algorithms=["HS256"])


async def _until(condition: Callable[[], bool]) -> None:
    """Until `condition` holds (what the JWKS server's thread has seen)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached within 30 s")


def _hs256_token(secret: bytes, *, kid: str) -> str:
    """Signed by hand: PyJWT refuses a public key as an HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    claims = {"tenant_id": "t", "exp": int(time.time()) + 60}
    signing_input = b".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in (header, claims)
    )
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
