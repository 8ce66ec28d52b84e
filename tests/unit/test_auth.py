"""JWT verification and the development key."""

from __future__ import annotations

import json
import multiprocessing
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chat_service.__main__ import main
from chat_service.auth import (
    DEV_ISSUER,
    DEV_KEY_FILENAME,
    SCOPE_READ,
    SCOPE_WRITE,
    DevKey,
    JwtVerifier,
    Principal,
    load_or_create_dev_key,
)
from chat_service.domain.errors import Unauthenticated

SECRET = "s" * 32
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_ED_KEY = ed25519.Ed25519PrivateKey.generate()

OTHER_SCOPE = "chat:agent"  # a scope the service itself never asks for


def _public_pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | Any) -> bytes:
    public: Any = key.public_key()
    pem: bytes = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "tenant_id": "tenant-a",
        "sub": "user-1",
        "scope": f"{SCOPE_READ} {SCOPE_WRITE}",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def _eddsa_token(key: ed25519.Ed25519PrivateKey = ED_KEY, **claims: Any) -> str:
    return jwt.encode(_claims(**claims), key, algorithm="EdDSA")


def _eddsa_verifier(**options: Any) -> JwtVerifier:
    return JwtVerifier(public_key_pem=_public_pem(ED_KEY), **options)


def _reason(verify: Callable[[], Principal]) -> str:
    with pytest.raises(Unauthenticated) as raised:
        verify()
    return raised.value.reason


# -------------------------------------------------------------- valid tokens


def test_valid_eddsa_token_gives_the_principal() -> None:
    token = _eddsa_token()
    principal = _eddsa_verifier().verify(token)
    assert principal == Principal(
        tenant_id="tenant-a",
        subject="user-1",
        scopes=frozenset({SCOPE_READ, SCOPE_WRITE}),
        valid_until=jwt.decode(token, options={"verify_signature": False})["exp"],
    )


def test_valid_hs256_token_gives_the_principal() -> None:
    token = jwt.encode(_claims(tenant_id="tenant-h"), SECRET, algorithm="HS256")
    principal = JwtVerifier(secret=SECRET).verify(token)
    assert principal.tenant_id == "tenant-h"


@pytest.mark.parametrize(
    ("make_key", "algorithm"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
    ],
    ids=["ES256", "RS256"],
)
def test_ec_and_rsa_public_keys_verify_their_algorithm(
    make_key: Callable[[], Any], algorithm: str
) -> None:
    key = make_key()
    verifier = JwtVerifier(public_key_pem=_public_pem(key))
    assert verifier.algorithms == {algorithm}
    token = jwt.encode(_claims(), key, algorithm=algorithm)
    assert verifier.verify(token).tenant_id == "tenant-a"


def test_scopes_come_from_scope_and_scp_in_either_form() -> None:
    verifier = _eddsa_verifier()
    token = _eddsa_token(scope=SCOPE_READ, scp=[OTHER_SCOPE, 7, ""])
    assert verifier.verify(token).scopes == {SCOPE_READ, OTHER_SCOPE}
    token = _eddsa_token(scope=None, scp=f"{SCOPE_WRITE}  {OTHER_SCOPE}")
    assert verifier.verify(token).scopes == {SCOPE_WRITE, OTHER_SCOPE}
    assert verifier.verify(_eddsa_token(scope=None)).scopes == frozenset()


def test_missing_subject_is_empty() -> None:
    assert _eddsa_verifier().verify(_eddsa_token(sub=None)).subject == ""


def test_issuer_and_audience_are_accepted_when_they_match() -> None:
    verifier = _eddsa_verifier(issuer="https://issuer", audience="chat")
    token = _eddsa_token(iss="https://issuer", aud=["other", "chat"])
    assert verifier.verify(token).tenant_id == "tenant-a"


def test_audience_is_not_checked_when_none_is_configured() -> None:
    assert _eddsa_verifier().verify(_eddsa_token(aud="anyone")).tenant_id == "tenant-a"


# ------------------------------------------------------------ refused tokens


def test_expired_token() -> None:
    token = _eddsa_token(exp=int(time.time()) - 60)
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TOKEN_EXPIRED"


def test_leeway_absorbs_clock_skew() -> None:
    token = _eddsa_token(exp=int(time.time()) - 5)
    assert _eddsa_verifier(leeway_seconds=30).verify(token).tenant_id == "tenant-a"


def test_token_not_yet_valid() -> None:
    token = _eddsa_token(nbf=int(time.time()) + 600)
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TOKEN_NOT_YET_VALID"


def test_token_signed_by_another_key() -> None:
    token = _eddsa_token(OTHER_ED_KEY)
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TOKEN_INVALID"


def test_tampered_payload() -> None:
    header, _, signature = _eddsa_token().split(".")
    forged_payload = jwt.utils.base64url_encode(
        json.dumps(_claims(tenant_id="tenant-b")).encode()
    ).decode()
    token = f"{header}.{forged_payload}.{signature}"
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TOKEN_INVALID"


def test_unsigned_token() -> None:
    token = jwt.encode(_claims(), "", algorithm="none")
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TOKEN_INVALID"


def test_public_key_is_never_used_as_an_hmac_secret() -> None:
    # The classic algorithm confusion: HS256 "signed" with the public key.
    import hashlib
    import hmac

    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    payload = jwt.utils.base64url_encode(json.dumps(_claims()).encode())
    signing_input = header + b"." + payload
    mac = hmac.new(_public_pem(ED_KEY), signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + jwt.utils.base64url_encode(mac)).decode()
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TOKEN_INVALID"


def test_algorithm_not_allowed_even_with_a_valid_signature() -> None:
    verifier = JwtVerifier(public_key_pem=_public_pem(ED_KEY), secret=SECRET, algorithms=["HS256"])
    assert _reason(lambda: verifier.verify(_eddsa_token())) == "TOKEN_INVALID"
    hs_token = jwt.encode(_claims(), SECRET, algorithm="HS256")
    assert verifier.verify(hs_token).tenant_id == "tenant-a"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://evil"}, "TOKEN_WRONG_ISSUER"),
        ({"iss": None}, "TOKEN_WRONG_ISSUER"),
        ({"aud": "other"}, "TOKEN_WRONG_AUDIENCE"),
        ({"aud": None}, "TOKEN_WRONG_AUDIENCE"),
    ],
    ids=["wrong-issuer", "no-issuer", "wrong-audience", "no-audience"],
)
def test_configured_issuer_and_audience_must_match(claims: dict[str, Any], reason: str) -> None:
    verifier = _eddsa_verifier(issuer="https://issuer", audience="chat")
    token = _eddsa_token(**{"iss": "https://issuer", "aud": "chat", **claims})
    assert _reason(lambda: verifier.verify(token)) == reason


@pytest.mark.parametrize("tenant", [None, ""])
def test_missing_tenant_claim(tenant: object) -> None:
    token = _eddsa_token(tenant_id=tenant)
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TENANT_CLAIM_MISSING"


@pytest.mark.parametrize("tenant", [42, ["tenant-a"], {"id": "tenant-a"}, True, 1.5])
def test_a_tenant_claim_of_another_type_is_invalid(tenant: object) -> None:
    token = _eddsa_token(tenant_id=tenant)
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TENANT_CLAIM_INVALID"


def test_expiry_is_required() -> None:
    token = _eddsa_token(exp=None)
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TOKEN_INVALID"


def test_empty_and_malformed_tokens() -> None:
    verifier = _eddsa_verifier()
    assert _reason(lambda: verifier.verify("")) == "TOKEN_MISSING"
    assert _reason(lambda: verifier.verify("not.a.jwt")) == "TOKEN_INVALID"
    assert _reason(lambda: verifier.verify("ünïcode")) == "TOKEN_INVALID"


def test_error_messages_never_repeat_the_token() -> None:
    verifier = _eddsa_verifier(issuer="https://issuer")
    tokens = [
        _eddsa_token(exp=int(time.time()) - 60),
        _eddsa_token(OTHER_ED_KEY),
        _eddsa_token(iss="https://evil"),
        _eddsa_token(iss="https://issuer", tenant_id=None),
        "garbage-token-value",
    ]
    for token in tokens:
        with pytest.raises(Unauthenticated) as raised:
            verifier.verify(token)
        assert token not in str(raised.value)
        assert token.split(".")[0] not in raised.value.message


# ----------------------------------------------------------------- set-up


def test_a_verifier_needs_a_key() -> None:
    with pytest.raises(ValueError, match="public key or an HS256 secret"):
        JwtVerifier()


@pytest.mark.parametrize("leeway", [float("nan"), float("inf"), -1.0])
def test_a_leeway_that_is_no_duration_is_refused(leeway: float) -> None:
    # A NaN leeway made `exp <= now - leeway` false forever: no token expired.
    with pytest.raises(ValueError, match="leeway"):
        _eddsa_verifier(leeway_seconds=leeway)


def test_a_short_hs256_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        JwtVerifier(secret="short")


def test_an_algorithm_without_its_key_is_refused() -> None:
    with pytest.raises(ValueError, match="RS256"):
        JwtVerifier(secret=SECRET, algorithms=["HS256", "RS256"])


def test_a_non_pem_public_key_is_refused() -> None:
    with pytest.raises(ValueError, match="not a PEM public key"):
        JwtVerifier(public_key_pem="-----BEGIN NOTHING-----")


# ------------------------------------------------------------------ dev key


def test_dev_key_is_created_private_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "var" / "nested"
    first = load_or_create_dev_key(data_dir)
    path = data_dir / DEV_KEY_FILENAME
    assert first.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_or_create_dev_key(data_dir)
    assert second.public_key_pem() == first.public_key_pem()
    assert [p.name for p in data_dir.iterdir()] == [DEV_KEY_FILENAME]  # no temporary left


def test_dev_tokens_verify_with_the_dev_verifier(tmp_path: Path) -> None:
    key = load_or_create_dev_key(tmp_path)
    token = key.mint("tenant-d", "alice", {SCOPE_READ, OTHER_SCOPE}, ttl_seconds=60)
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == DEV_ISSUER
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert key.verifier(leeway_seconds=5).verify(token) == Principal(
        tenant_id="tenant-d",
        subject="alice",
        scopes=frozenset({SCOPE_READ, OTHER_SCOPE}),
        valid_until=exp + 5,
    )


def test_dev_verifier_refuses_other_keys_issuers_and_expired_tokens(tmp_path: Path) -> None:
    key = load_or_create_dev_key(tmp_path / "a")
    other = load_or_create_dev_key(tmp_path / "b")
    verifier = key.verifier(leeway_seconds=0)
    assert _reason(lambda: verifier.verify(other.mint("t"))) == "TOKEN_INVALID"
    assert _reason(lambda: verifier.verify(key.mint("t", issuer="x"))) == "TOKEN_WRONG_ISSUER"
    assert _reason(lambda: verifier.verify(key.mint("t", ttl_seconds=-1))) == "TOKEN_EXPIRED"


def test_a_corrupt_dev_key_file_is_reported_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / DEV_KEY_FILENAME
    path.write_text("not a key")
    with pytest.raises(ValueError, match="delete it"):
        load_or_create_dev_key(tmp_path)
    assert path.read_text() == "not a key"


def _load_together(data_dir: Path, count: int) -> list[DevKey]:
    """Load the dev key from `count` threads released at the same moment."""
    barrier = threading.Barrier(count)
    keys: list[DevKey] = []

    def load() -> None:
        barrier.wait()
        keys.append(load_or_create_dev_key(data_dir))

    threads = [threading.Thread(target=load) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return keys


def test_concurrent_creation_in_threads_yields_one_key(tmp_path: Path) -> None:
    for attempt in range(5):
        data_dir = tmp_path / str(attempt)
        keys = _load_together(data_dir, 8)
        on_disk = load_or_create_dev_key(data_dir).public_key_pem()
        assert len(keys) == 8
        assert {key.public_key_pem() for key in keys} == {on_disk}


def _public_key_in_child(data_dir: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    results.put(load_or_create_dev_key(Path(data_dir)).public_key_pem())


def test_concurrent_creation_in_processes_yields_one_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    results = context.Queue()
    processes = [
        context.Process(target=_public_key_in_child, args=(str(tmp_path), barrier, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    keys = {results.get(timeout=30) for _ in processes}
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert keys == {load_or_create_dev_key(tmp_path).public_key_pem()}


def test_a_verified_token_is_remembered_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = _eddsa_verifier()
    now = time.time()
    token = _eddsa_token(exp=int(now) + 60)
    checked: list[str] = []
    check = verifier._verified_claims

    def counting_check(t: str) -> dict[str, Any]:
        checked.append(t)
        return check(t)

    monkeypatch.setattr(verifier, "_verified_claims", counting_check)
    first = verifier.verify(token)

    assert verifier.verify(token) is first
    assert checked == [token]  # the second call did not check the signature again

    # Past exp by the cache's clock: the token is checked in full again.
    monkeypatch.setattr(time, "time", lambda: now + 120)
    assert _reason(lambda: verifier.verify(token)) == "TOKEN_EXPIRED"
    assert checked == [token, token]


def test_a_rejected_token_is_never_remembered() -> None:
    verifier = _eddsa_verifier()
    forged = _eddsa_token(ed25519.Ed25519PrivateKey.generate())

    for _ in range(2):
        assert _reason(lambda: verifier.verify(forged)) == "TOKEN_INVALID"


@pytest.mark.parametrize(
    "tenant",
    [
        "a/b",
        "-leading-dash",
        "x" * 129,
        "tab\there",
        "ünïcode",
        # Control characters anywhere (a trailing newline too: fullmatch, not $).
        "acme\x00",
        "acme\n",
        "ac\x7fme",
        "acme\u2028",
        "acme ",
    ],
)
def test_a_tenant_id_that_could_collide_in_keys_is_refused(tenant: str) -> None:
    assert (
        _reason(lambda: _eddsa_verifier().verify(_eddsa_token(tenant_id=tenant)))
        == "TENANT_CLAIM_INVALID"
    )


def test_the_longest_tenant_id_is_accepted() -> None:
    tenant = "t" * 128  # the bound store and Redis keys are sized for
    assert _eddsa_verifier().verify(_eddsa_token(tenant_id=tenant)).tenant_id == tenant


@pytest.mark.parametrize("tenant", ["a/b", "acme\x00", "x" * 129])
def test_the_token_command_refuses_a_tenant_the_server_would_refuse(
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("MONGODB_URI", "REDIS_URL", "JWT_PUBLIC_KEY", "JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))

    assert main(["token", "--tenant", tenant]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--tenant" in captured.err


# ------------------------------------------------- tokens nobody should send
#
# Whatever a token holds, the verifier answers Unauthenticated: never
# OverflowError, ValueError or RecursionError (INTERNAL to the caller).


def _b64(data: str) -> str:
    return jwt.utils.base64url_encode(data.encode()).decode()


def _raw_eddsa(payload: str, header: str = '{"alg":"EdDSA","typ":"JWT"}') -> str:
    """A token over exactly this JSON text (numbers json.dumps cannot write)."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    signature = jwt.utils.base64url_encode(ED_KEY.sign(signing_input.encode())).decode()
    return f"{signing_input}.{signature}"


def _with_time_claim(name: str, json_value: str) -> str:
    claims = _claims()
    claims.pop(name, None)
    body = json.dumps(claims)[:-1] + f', "{name}": {json_value}}}'
    return _raw_eddsa(body)


HUGE = "1" + "0" * 400  # 10**400: int() of it is fine, float() overflows
ODD_TIME_VALUES = [
    HUGE,
    "-" + HUGE,
    "9" * 5000,  # past int()'s digit limit
    "1e400",  # json.loads: inf
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e18",  # a finite number, but no date
    "1.7976931348623157e308",
    "true",
    "false",
    "null",
    '"1900000000"',  # a number in a string
    '"soon"',
    "[1900000000]",
    '{"t": 1}',
]


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ODD_TIME_VALUES)
def test_a_time_claim_that_is_no_date_is_invalid(claim: str, value: str) -> None:
    token = _with_time_claim(claim, value)
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TOKEN_INVALID"


def test_time_claims_may_be_fractional_and_past_dates_expire() -> None:
    now = time.time()
    assert _eddsa_verifier().verify(_with_time_claim("exp", repr(now + 60.5))).tenant_id
    assert _eddsa_verifier().verify(_with_time_claim("iat", repr(now - 0.25))).tenant_id
    expired = _with_time_claim("exp", "-5")
    assert _reason(lambda: _eddsa_verifier().verify(expired)) == "TOKEN_EXPIRED"
    future = _with_time_claim("iat", str(int(now) + 3600))
    assert _reason(lambda: _eddsa_verifier().verify(future)) == "TOKEN_NOT_YET_VALID"


def test_a_remembered_token_with_a_huge_expiry_cannot_break_the_cache() -> None:
    verifier = _eddsa_verifier()
    token = _with_time_claim("exp", HUGE)
    for _ in range(2):
        assert _reason(lambda: verifier.verify(token)) == "TOKEN_INVALID"


@pytest.mark.parametrize(
    "payload",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        "[1, 2]",
        '"a string"',
        "not json",
        "",
    ],
    ids=["nested-list", "nested-object", "list", "string", "not-json", "empty"],
)
def test_a_payload_that_is_no_claims_object_is_invalid(payload: str) -> None:
    assert _reason(lambda: _eddsa_verifier().verify(_raw_eddsa(payload))) == "TOKEN_INVALID"


@pytest.mark.parametrize(
    "header",
    [
        '{"alg":"EdDSA","x":' + "[" * 100_000 + "]" * 100_000 + "}",
        '["EdDSA"]',
        '{"alg":["EdDSA"]}',
        '{"alg":null}',
        '{"alg":"none"}',
        '{"alg":"NONE"}',
        '{"alg":"eddsa"}',
        '{"alg":"EdDSA","crit":["exp"]}',
        '{"alg":"EdDSA","b64":false}',
    ],
)
def test_an_odd_header_is_invalid(header: str) -> None:
    token = _raw_eddsa(json.dumps(_claims()), header)
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TOKEN_INVALID"


def test_an_enormous_token_is_refused_before_it_is_decoded() -> None:
    verifier = _eddsa_verifier()
    padded = _eddsa_token(padding="x" * 1_000_000)  # validly signed, but absurd
    assert _reason(lambda: verifier.verify(padded)) == "TOKEN_INVALID"
    assert _reason(lambda: verifier.verify("a" * 10_000_000)) == "TOKEN_INVALID"


def test_eddsa_and_es256_are_never_mixed_up() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    es_verifier = JwtVerifier(public_key_pem=_public_pem(ec_key))
    ed_verifier = _eddsa_verifier()
    es_token = jwt.encode(_claims(), ec_key, algorithm="ES256")
    # An EdDSA signature under an ES256 header, and the reverse.
    header_es = _b64('{"alg":"ES256","typ":"JWT"}')
    _, payload, ed_signature = _eddsa_token().split(".")
    header_ed, _, es_signature = es_token.split(".")

    assert _reason(lambda: ed_verifier.verify(es_token)) == "TOKEN_INVALID"
    assert _reason(lambda: es_verifier.verify(_eddsa_token())) == "TOKEN_INVALID"
    assert _reason(lambda: es_verifier.verify(f"{header_es}.{payload}.{ed_signature}")) == (
        "TOKEN_INVALID"
    )
    es_payload = es_token.split(".")[1]
    assert _reason(lambda: ed_verifier.verify(f"{header_ed}.{es_payload}.{es_signature}")) == (
        "TOKEN_INVALID"
    )
    # ES384 and ES256K are other curves: never verified with the P-256 key.
    for algorithm in ("ES384", "ES256K", "ES512"):
        header = _b64(json.dumps({"alg": algorithm, "typ": "JWT"}))
        with pytest.raises(Unauthenticated) as refused:
            es_verifier.verify(f"{header}.{es_payload}.{es_signature}")
        assert refused.value.reason == "TOKEN_INVALID"


def test_hs256_signed_with_the_public_key_pem_of_an_rs256_verifier_is_invalid() -> None:
    import hashlib
    import hmac

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = JwtVerifier(public_key_pem=_public_pem(rsa_key), secret=SECRET)
    signing_input = _b64('{"alg":"HS256"}') + "." + _b64(json.dumps(_claims()))
    mac = hmac.new(_public_pem(rsa_key), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{jwt.utils.base64url_encode(mac).decode()}"

    assert _reason(lambda: verifier.verify(token)) == "TOKEN_INVALID"


@pytest.mark.parametrize("subject", [5, ["user-1"], {"id": 1}, True])
def test_a_subject_of_another_type_is_invalid(subject: object) -> None:
    token = _eddsa_token(sub=subject)
    assert _reason(lambda: _eddsa_verifier().verify(token)) == "TOKEN_INVALID"


@pytest.mark.parametrize(
    ("scope", "granted"),
    [
        ([SCOPE_READ], {SCOPE_READ}),  # a list, as `scp` is
        (5, set()),
        ([5, None, [SCOPE_WRITE]], set()),
        ({"chat:read": True}, set()),
    ],
)
def test_a_scope_of_another_type_grants_nothing_more(scope: object, granted: set[str]) -> None:
    assert _eddsa_verifier().verify(_eddsa_token(scope=scope)).scopes == granted
