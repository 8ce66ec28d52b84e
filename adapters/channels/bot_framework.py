"""The Bot Framework plumbing both Teams directions share.

- `ConnectorKeys`: the Bot Connector's signing keys, from its OpenID
  metadata (TEAMS_OPENID_METADATA_URL) and the JWKS document it names
  (https://learn.microsoft.com/en-us/azure/bot-service/rest-api/bot-framework-rest-connector-authentication?view=azure-bot-service-4.0,
  "Connector to bot", steps 2 and 3). Kept for a day (the document says the
  list "is relatively stable and may be cached for long periods"), fetched
  again at once when a token names a key id not in the list (the Bot
  Connector rotated its keys), but at most once per `min_refresh_seconds`
  for unknown ids: a flood of tokens with made-up ids costs no flood of
  fetches. One fetch at a time, whoever is waiting.
- `verify_connector_token`: steps 2 to 6 of "Verify the JWT token" on the
  token alone (RS256 only, with one of the published keys; the issuer the
  metadata names, `https://api.botframework.com` by default; `exp` and
  `nbf` within 5 minutes of skew). The audience (step 4) and the serviceUrl
  claim (step 7) need the candidate connections and the activity: the
  inbound adapter checks them (adapters/channels/teams.py).
- `BotTokens`: the bot's own access tokens for the Bot Connector, by the
  OAuth client credentials grant (TEAMS_TOKEN_URL, scope
  `https://api.botframework.com/.default`; same page, "Bot to connector"),
  cached per app until 5 minutes before they expire.
- `service_url_problem`: where replies may be posted. The serviceUrl comes
  with each verified activity and is stored on the inbound message; a
  SendMessage caller can store channel metadata too, so the sender checks
  it again before handing it the bot's access token: https, on a host of
  the Bot Connector or of Teams (the well-known Teams service endpoints:
  smba.trafficmanager.net, and the GCC, GCC High and DoD clouds under
  teams.microsoft.com / teams.microsoft.us;
  https://learn.microsoft.com/en-us/dotnet/api/microsoft.agents.extensions.msteams.teamsproactiveserviceendpoints).
  Loopback hosts (http or https) pass only when TEAMS_TOKEN_URL itself is a
  loopback URL: a deployment against local emulators, never production.

Secrets (the app password, access tokens) never reach a log line or an
exception message.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from adapters.channels.http_api import redact, retry_after, unreachable_as_delivery_error
from adapters.tracing.http import NO_HTTP_TRACING, HttpTracing
from chat_service.domain.errors import Unauthenticated, Unavailable
from chat_service.ports import DeliveryError

log = logging.getLogger(__name__)

DEFAULT_OPENID_METADATA_URL = "https://login.botframework.com/v1/.well-known/openidconfiguration"
DEFAULT_TOKEN_URL = "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token"  # noqa: S105 (a URL)
TOKEN_SCOPE = "https://api.botframework.com/.default"  # noqa: S105 (a scope)
CONNECTOR_ISSUER = "https://api.botframework.com"
# "Industry-standard clock-skew is 5 minutes" (the authentication page, step 4.5).
CLOCK_SKEW_SECONDS = 300
# The only algorithm taken, whatever else the metadata lists: never "none"
# or an HMAC one, which a published public key could then "sign".
SUPPORTED_ALGORITHMS = frozenset({"RS256"})

KEYS_MAX_AGE_SECONDS = 24 * 3600.0
MIN_REFRESH_SECONDS = 60.0
# With no keys at all, a failed fetch is tried again after this long (what
# the Unavailable answer asks the Bot Connector to wait), not by every call.
KEYS_RETRY_SECONDS = 5.0
# A token is a few KB; anything far larger is not one.
MAX_TOKEN_LENGTH = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024  # the metadata and key documents
TOKEN_REFRESH_MARGIN_SECONDS = 300.0
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

WEBHOOK_SIGNATURE_INVALID = "WEBHOOK_SIGNATURE_INVALID"
WEBHOOK_KEYS_UNAVAILABLE = "WEBHOOK_KEYS_UNAVAILABLE"

_LOOPBACK_NAMES = frozenset({"localhost"})
_TRUSTED_HOSTS = frozenset({"smba.trafficmanager.net"})
_TRUSTED_SUFFIXES = (".botframework.com", ".teams.microsoft.com", ".teams.microsoft.us")
# A DNS host name as every URL parser and resolver reads it alike.
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_AADSTS = re.compile(r"AADSTS\d+")


def login_client() -> httpx.AsyncClient:
    """The client of Microsoft's login endpoints (OpenID metadata, keys,
    tokens): no redirect is followed, so a password or token never goes
    anywhere the configured URL does not name."""
    return httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUT, follow_redirects=False, headers={"Accept": "application/json"}
    )


def refused(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=WEBHOOK_SIGNATURE_INVALID)


def is_loopback_url(url: str) -> bool:
    """Whether `url` names this machine (127.0.0.0/8, ::1, localhost)."""
    host = (urlsplit(url).hostname or "").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_url_problem(url: str, *, allow_loopback: bool) -> str | None:
    """Why replies must not be posted to `url` (a serviceUrl), or None."""
    if not url.isascii() or not url.isprintable() or " " in url:
        # urlsplit drops tabs and newlines before reading the host; httpx
        # refuses them: the host checked must be the host called.
        return "the serviceUrl holds spaces or control characters"
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return "the serviceUrl is not a URL"
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return "the serviceUrl carries credentials, a query or a fragment"
    if allow_loopback and parts.scheme in ("http", "https") and is_loopback_url(url):
        return None
    if parts.scheme != "https":
        return "the serviceUrl is not https"
    if _HOST_NAME.fullmatch(host) is None:
        return f"the serviceUrl host {host[:100]!r} is not a DNS name"
    if host in _TRUSTED_HOSTS or host.endswith(_TRUSTED_SUFFIXES):
        return None
    return f"the serviceUrl host {host[:100]!r} is not a Bot Connector or Teams host"


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    if len(response.content) > MAX_DOCUMENT_BYTES:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


# ----------------------------------------------------------- signing keys


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    key: RSAPublicKey
    # The channel ids the key is endorsed for; None when the key names none.
    endorsements: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class KeySet:
    issuer: str
    algorithms: frozenset[str]
    keys: Mapping[str, SigningKey]
    fetched_at: float  # monotonic


class KeysUnavailable(Exception):
    """The metadata or the key document could not be fetched or read."""


class ConnectorKeys:
    """The Bot Connector's published signing keys (see the module doc)."""

    def __init__(
        self,
        metadata_url: str = DEFAULT_OPENID_METADATA_URL,
        *,
        http: httpx.AsyncClient,
        max_age: float = KEYS_MAX_AGE_SECONDS,
        min_refresh_seconds: float = MIN_REFRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metadata_url = metadata_url
        self._http = http
        self._max_age = max_age
        self._min_refresh = min_refresh_seconds
        self._monotonic = monotonic
        self._current: KeySet | None = None
        self._last_attempt: float | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self.fetches = 0  # metadata fetches attempted (for operators and tests)

    async def lookup(self, kid: str) -> tuple[KeySet, SigningKey | None]:
        """The current key set and the key `kid` in it, refreshed first when
        the set is old or (rate-limited) when it lacks `kid`. Unavailable
        when no key set could ever be fetched."""
        current, generation = self._current, self._generation
        now = self._monotonic()
        if current is None or self._wants_refresh(current, kid, now):
            current = await self._refresh(generation)
        return current, current.keys.get(kid)

    def _wants_refresh(self, current: KeySet, kid: str, now: float) -> bool:
        # Either reason is rate-limited: while the metadata cannot be fetched,
        # old keys are used rather than fetched again by every call.
        stale = now - current.fetched_at >= self._max_age
        return (stale or kid not in current.keys) and self._may_refresh(now)

    def _may_refresh(self, now: float) -> bool:
        return self._last_attempt is None or now - self._last_attempt >= self._min_refresh

    async def _refresh(self, seen_generation: int) -> KeySet:
        async with self._lock:
            if self._generation != seen_generation and self._current is not None:
                return self._current  # refreshed by another caller meanwhile
            if (
                self._current is None
                and self._last_attempt is not None
                and self._monotonic() - self._last_attempt < KEYS_RETRY_SECONDS
            ):
                raise _keys_unavailable()  # failed just now (those waiting: the same)
            self._last_attempt = self._monotonic()
            self.fetches += 1
            try:
                fresh = await self._fetch()
            except KeysUnavailable as error:
                if self._current is not None:
                    log.warning("Bot Connector keys not refreshed (%s); the old ones stay", error)
                    return self._current
                log.error("Bot Connector keys unavailable: %s", error)
                raise _keys_unavailable() from None
            self._current = fresh
            self._generation += 1
            return fresh

    async def _fetch(self) -> KeySet:
        metadata = await self._document(self._metadata_url, "the OpenID metadata")
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _fetchable(jwks_uri, self._metadata_url):
            raise KeysUnavailable("the OpenID metadata names no usable jwks_uri")
        issuer = metadata.get("issuer")
        algorithms = metadata.get("id_token_signing_alg_values_supported")
        allowed = (
            frozenset(a for a in algorithms if isinstance(a, str)) & SUPPORTED_ALGORITHMS
            if isinstance(algorithms, list)
            else SUPPORTED_ALGORITHMS
        )
        document = await self._document(jwks_uri, "the key document")
        raw_keys = document.get("keys")
        if not isinstance(raw_keys, list):
            raise KeysUnavailable("the key document has no keys list")
        keys = {key.kid: key for key in map(_signing_key, raw_keys) if key is not None}
        if not keys:
            raise KeysUnavailable("the key document has no usable RSA key")
        return KeySet(
            issuer=issuer if isinstance(issuer, str) and issuer else CONNECTOR_ISSUER,
            algorithms=allowed,
            keys=keys,
            fetched_at=self._monotonic(),
        )

    async def _document(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, timeout=DEFAULT_TIMEOUT)
        except httpx.HTTPError as error:
            raise KeysUnavailable(f"{what}: {type(error).__name__}") from None
        if not response.is_success:
            raise KeysUnavailable(f"{what}: HTTP {response.status_code}")
        body = _json_object(response)
        if body is None:
            raise KeysUnavailable(f"{what} is not a JSON object")
        return body


def _keys_unavailable() -> Unavailable:
    return Unavailable(
        "the Bot Connector's signing keys cannot be fetched right now",
        reason=WEBHOOK_KEYS_UNAVAILABLE,
        retry_after=KEYS_RETRY_SECONDS,
    )


def _fetchable(url: str, metadata_url: str) -> bool:
    """The jwks_uri is https, or http on loopback when the metadata itself
    is (a local emulator)."""
    scheme = urlsplit(url).scheme
    if scheme == "https":
        return True
    return scheme == "http" and is_loopback_url(url) and is_loopback_url(metadata_url)


def _signing_key(raw: object) -> SigningKey | None:
    if not isinstance(raw, dict) or raw.get("kty") != "RSA":
        return None
    kid = raw.get("kid")
    if not isinstance(kid, str) or not kid or raw.get("use", "sig") != "sig":
        return None
    try:
        key = jwt.PyJWK(raw, algorithm="RS256").key
    except (jwt.PyJWTError, ValueError, TypeError):
        log.warning("Bot Connector key %r skipped: not a readable RSA key", kid[:64])
        return None
    if not isinstance(key, RSAPublicKey):
        return None
    endorsements = raw.get("endorsements")
    return SigningKey(
        kid=kid,
        key=key,
        endorsements=frozenset(e for e in endorsements if isinstance(e, str))
        if isinstance(endorsements, list)
        else None,
    )


# ---------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class ConnectorToken:
    """A token the Bot Connector signed: its claims and the key it used."""

    claims: Mapping[str, Any]
    key: SigningKey

    @property
    def audiences(self) -> frozenset[str]:
        aud = self.claims.get("aud")
        values = aud if isinstance(aud, list) else [aud]
        return frozenset(v.lower() for v in values if isinstance(v, str) and v)

    def service_urls(self) -> list[str]:
        """The serviceUrl claim, however spelled: the documentation says
        `serviceUrl`, the SDKs (and the tokens) `serviceurl`."""
        return [
            value
            for name, value in self.claims.items()
            if name.lower() == "serviceurl" and isinstance(value, str)
        ]


async def verify_connector_token(
    authorization: str | None, keys: ConnectorKeys, *, leeway: float = CLOCK_SKEW_SECONDS
) -> ConnectorToken:
    """The Bot Connector's token from an `Authorization: Bearer` header,
    signature, issuer and lifetime checked; Unauthenticated otherwise."""
    token = _bearer(authorization)
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        raise refused("the Authorization token is not a JWT") from None
    algorithm, kid = header.get("alg"), header.get("kid")
    if algorithm not in SUPPORTED_ALGORITHMS:
        # Before any key lookup: such a token costs no refresh.
        raise refused("the token is not signed with an algorithm the Bot Connector uses")
    if not isinstance(kid, str) or not kid:
        raise refused("the token names no signing key (kid)")
    key_set, key = await keys.lookup(kid)
    if algorithm not in key_set.algorithms:
        raise refused("the token is not signed with an algorithm the Bot Connector uses")
    if key is None:
        raise refused("the token is signed with a key the Bot Connector does not publish")
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[str(algorithm)],
            issuer=key_set.issuer,
            leeway=leeway,
            options={"verify_aud": False, "require": ["exp", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise refused("the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise refused("the token is not valid yet") from None
    except jwt.InvalidIssuerError:
        raise refused("the token was not issued by the Bot Connector") from None
    except jwt.InvalidSignatureError:
        raise refused("the token's signature does not verify") from None
    except jwt.MissingRequiredClaimError as missing:
        raise refused(f"the token has no {missing.claim!r} claim") from None
    except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError) as error:
        raise refused(f"the token is malformed ({type(error).__name__})") from None
    return ConnectorToken(claims=claims, key=key)


def _bearer(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise refused("the Authorization header with the Bot Connector's token is missing")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise refused("the Authorization header is not 'Bearer <token>'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise refused("the Authorization token is too long to be a Bot Connector token")
    return token


# ------------------------------------------------------------ bot tokens


@dataclass(frozen=True, slots=True)
class _Cached:
    token: str
    refresh_at: float  # monotonic


class BotTokens:
    """The bot's access tokens for the Bot Connector (client credentials),
    cached per app id and password until shortly before they expire: a
    changed password (a connection update) gets a token of its own."""

    def __init__(
        self,
        token_url: str = DEFAULT_TOKEN_URL,
        *,
        http: httpx.AsyncClient,
        margin: float = TOKEN_REFRESH_MARGIN_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        tracing: HttpTracing = NO_HTTP_TRACING,
    ) -> None:
        self._tracing = tracing
        self._token_url = token_url
        self._http = http
        self._margin = margin
        self._monotonic = monotonic
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def token(self, app_id: str, password: str) -> tuple[str, bool]:
        """An access token for the app, and whether it was fetched just now
        (a refused cached one is worth one fresh try)."""
        if not app_id or not password:
            raise DeliveryError(
                "the Teams connection has no app id or app password", retryable=False
            )
        key = _cache_key(app_id, password)
        cached = self._cache.get(key)
        if cached is not None and self._monotonic() < cached.refresh_at:
            return cached.token, False
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            if cached is not None and self._monotonic() < cached.refresh_at:
                return cached.token, False
            token, lifetime = await self._fetch(app_id, password)
            # Renewed `margin` before it expires (half its life if shorter).
            keep = lifetime - self._margin if lifetime > 2 * self._margin else lifetime / 2
            self._cache[key] = _Cached(token, self._monotonic() + max(0.0, keep))
            return token, True

    def forget(self, app_id: str, password: str) -> None:
        self._cache.pop(_cache_key(app_id, password), None)

    async def _fetch(self, app_id: str, password: str) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "client_id": app_id,
            "client_secret": password,
            "scope": TOKEN_SCOPE,
        }
        with unreachable_as_delivery_error("the Bot Framework token endpoint"):
            response = await self._tracing.request(
                self._http, "POST", self._token_url, data=form, timeout=DEFAULT_TIMEOUT
            )
        body = _json_object(response) or {}
        if not response.is_success:
            raise _token_error(response, body, password)
        token, lifetime = body.get("access_token"), _seconds(body.get("expires_in"))
        if not isinstance(token, str) or not token or lifetime is None:
            raise DeliveryError(
                "the Bot Framework token endpoint answered without a token", retryable=True
            )
        return token, lifetime


def _cache_key(app_id: str, password: str) -> tuple[str, str]:
    return app_id.lower(), hashlib.sha256(password.encode()).hexdigest()


def _seconds(value: object) -> float | None:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value) if value > 0 else None
    return None


def _token_error(response: httpx.Response, body: Mapping[str, Any], password: str) -> DeliveryError:
    """The token endpoint's refusal (OAuth 2.0 error response, RFC 6749
    5.2; Microsoft adds an AADSTS code to error_description)."""
    status = response.status_code
    code = body.get("error") if isinstance(body.get("error"), str) else ""
    description = body.get("error_description")
    aadsts = _AADSTS.search(description) if isinstance(description, str) else None
    detail = redact(
        " ".join(part for part in (str(code), aadsts.group(0) if aadsts else "") if part)
        or f"HTTP {status}",
        password,
    )
    if status == 429:
        wait = retry_after(response.headers)
        return DeliveryError(
            f"throttled by the Bot Framework token endpoint: {detail}",
            retryable=True,
            retry_after=wait if wait is not None else 1.0,
        )
    if status >= 500:
        return DeliveryError(
            f"the Bot Framework token endpoint failed: HTTP {status} {detail}",
            retryable=True,
            retry_after=retry_after(response.headers),
        )
    return DeliveryError(
        f"the Bot Framework token endpoint refused the app id and password: {detail}",
        retryable=False,
    )


def document_text(value: object) -> str:
    """Compact JSON of a value, for payloads the bot gets as text."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
