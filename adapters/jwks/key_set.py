"""The signing keys a JWKS endpoint publishes (RFC 7517), by key id.

Callers' tokens name their key (`kid`); the keys are fetched from
JWT_JWKS_URL with an async HTTP GET and kept, so that a key rotation at the
identity provider needs no restart here:

- A token naming a key not in the set fetches the set again at once (the
  provider added a key), but at most once per `min_refresh_seconds`,
  whatever triggers fetches: a flood of tokens with made-up key ids costs
  no flood of requests. One fetch at a time; callers waiting share it,
  and one that gives up (its deadline passed) does not abort it.
- The set is also fetched again when it is older than its Cache-Control
  max-age (bounded to [min_refresh_seconds, max_age_seconds]; without one,
  max_age_seconds), in the background: callers keep the current keys
  meanwhile, and a withdrawn key stops verifying once the new set arrives.
- A fetch has a deadline (`timeout_seconds`, the whole of it, body
  included) and a size limit (1 MB).
- A failed fetch (endpoint down, HTTP error, not a key set) keeps the keys
  there are. With none at all, callers get UNAVAILABLE (reason
  JWKS_UNAVAILABLE, retry after the rate limit's wait), never INTERNAL.

Only asymmetric signing keys are taken (RSA of 2048 bits or more for
RS256, P-256 for ES256, Ed25519 for EdDSA); any other entry is skipped,
whatever its shape: a JWKS is public, so an HMAC key in it, or a private
key published by mistake, could sign for anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chat_service.auth import JWKS_ALGORITHMS
from chat_service.domain.errors import Unavailable

log = logging.getLogger(__name__)

JWKS_UNAVAILABLE = "JWKS_UNAVAILABLE"
MIN_RSA_BITS = 2048
MAX_DOCUMENT_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 5.0
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
# The JWK members only a private key has (RFC 7518, 6.2.2, 6.3.2; RFC 8037).
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,10})\"?", re.IGNORECASE)

# A usable key: its algorithm and the public key object PyJWT verifies with.
Key = tuple[str, Any]


class _FetchFailed(Exception):
    """The key set could not be fetched; the message says why (no secrets)."""


class JwksKeys:
    """The keys of one JWKS endpoint (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        *,
        min_refresh_seconds: float = 30.0,
        max_age_seconds: float = 300.0,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        http: httpx.AsyncClient | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        if _plaintext_to_another_host(url):
            log.warning(
                "JWT_JWKS_URL is plain http to another host: whoever is on the path can "
                "publish keys of their own; use https unless the network is encrypted"
            )
        self._min_refresh = min_refresh_seconds
        self._max_age_bound = max(max_age_seconds, min_refresh_seconds)
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout_seconds, follow_redirects=False)
        # The whole fetch's deadline: httpx's timeout bounds each read only,
        # and a body sent a byte at a time would never end.
        self._timeout = timeout_seconds
        self._monotonic = monotonic
        self._keys: Mapping[str, Key] | None = None
        self._fingerprint: frozenset[str] = frozenset()
        self._fetched_at = 0.0
        self._max_age = self._max_age_bound
        self._last_attempt: float | None = None
        self._generation = 0
        self._fetching: asyncio.Task[None] | None = None
        self.fetches = 0  # attempted (for operators and tests)

    @property
    def generation(self) -> int:
        return self._generation

    async def key(self, kid: str) -> Key | None:
        if self._keys is None:
            await self._refresh()
            if self._keys is None:
                raise Unavailable(
                    "the identity provider's signing keys cannot be fetched right now",
                    reason=JWKS_UNAVAILABLE,
                    retry_after=max(self._wait(self._monotonic()), 1.0),
                )
        elif kid not in self._keys:
            await self._refresh()  # nothing new unless the rate limit allows it
        return self._keys.get(kid) if self._keys is not None else None

    def keep_fresh(self) -> None:
        if self._keys is not None and self._monotonic() - self._fetched_at >= self._max_age:
            self._fetch_now()

    async def start(self) -> None:
        """Fetch the keys now, in the background, so the first call need not wait."""
        self._fetch_now()

    async def refreshed(self) -> None:
        """Until the fetch under way, if any, has ended (and its keys are in)."""
        if self._fetching is not None:
            await asyncio.shield(self._fetching)

    async def aclose(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetching
        if self._own_http:
            await self._http.aclose()

    def _wait(self, now: float) -> float:
        """How long until the rate limit lets the next fetch happen."""
        if self._last_attempt is None:
            return 0.0
        return max(self._last_attempt + self._min_refresh - now, 0.0)

    async def _refresh(self) -> None:
        fetching = self._fetch_now()
        if fetching is not None:
            # Shielded: a caller that gives up (its deadline) must not abort
            # the fetch the others wait for, nor waste the rate limit's turn.
            await asyncio.shield(fetching)

    def _fetch_now(self) -> asyncio.Task[None] | None:
        """The fetch under way, else a new one if the rate limit allows it
        (one at a time: concurrent callers share it); None if neither."""
        if self._fetching is not None and not self._fetching.done():
            return self._fetching
        now = self._monotonic()
        if self._wait(now) > 0:
            return None
        self._last_attempt = now
        self.fetches += 1
        self._fetching = asyncio.create_task(self._fetch_and_keep())
        return self._fetching

    async def _fetch_and_keep(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                keys, fingerprint, max_age = await self._fetch()
        except (_FetchFailed, TimeoutError) as error:
            why = str(error) or "timed out"
            if self._keys is None:
                log.error("JWKS keys unavailable (JWT_JWKS_URL): %s", why)
            else:
                log.warning("JWKS keys not refreshed (%s); the cached ones stay", why)
        except Exception:  # a bug here must not fail every call INTERNAL
            log.exception("JWKS keys not fetched (JWT_JWKS_URL); the cached ones stay")
        else:
            self._keep(keys, fingerprint, max_age)

    def _keep(self, keys: dict[str, Key], fingerprint: frozenset[str], max_age: float) -> None:
        if fingerprint != self._fingerprint:
            self._generation += 1
            log.info("JWKS keys loaded: %s", ", ".join(sorted(keys)))
        self._keys, self._fingerprint = keys, fingerprint
        self._fetched_at = self._monotonic()
        self._max_age = min(max(max_age, self._min_refresh), self._max_age_bound)

    async def _fetch(self) -> tuple[dict[str, Key], frozenset[str], float]:
        try:
            async with self._http.stream(
                "GET", self._url, headers={"Accept": "application/json"}
            ) as response:
                if not response.is_success:
                    raise _FetchFailed(f"HTTP {response.status_code}")
                body = bytearray()
                # Read in pieces, so a runaway answer is cut off, not kept.
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _FetchFailed("the key set is larger than 1 MB")
                cache_control = response.headers.get("cache-control", "")
        except httpx.HTTPError as error:
            raise _FetchFailed(type(error).__name__) from None
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise _FetchFailed("the key set is not JSON") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise _FetchFailed("the document has no keys list")
        keys: dict[str, Key] = {}
        fingerprint: set[str] = set()
        for entry in entries:
            parsed = self._usable(entry)
            if parsed is not None and parsed[0] not in keys:
                kid, key = parsed
                keys[kid] = key
                fingerprint.add(json.dumps(entry, sort_keys=True))
        if not keys:
            raise _FetchFailed("the key set has no usable signing key")
        return keys, frozenset(fingerprint), _max_age(cache_control)

    def _usable(self, entry: object) -> tuple[str, Key] | None:
        if not isinstance(entry, dict):
            return None
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            return None
        kty = entry.get("kty")
        if not isinstance(kty, str) or kty not in {"RSA", "EC", "OKP"}:
            return None  # "oct" (HMAC) above all
        if any(member in entry for member in _PRIVATE_MEMBERS):
            # Published by mistake: whoever read it can sign. Not trusted.
            log.error("JWKS entry %r holds a private key: skipped", kid)
            return None
        try:
            jwk = jwt.PyJWK(entry)
        except Exception as error:  # whatever an odd entry makes PyJWT raise
            log.debug("JWKS entry %r skipped: %s", kid, type(error).__name__)
            return None
        algorithm, key = jwk.algorithm_name, jwk.key
        if algorithm not in JWKS_ALGORITHMS or not _signs_with(algorithm, key):
            return None
        return kid, (algorithm, key)


def _plaintext_to_another_host(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() == "http" and parts.hostname not in _LOOPBACK


def _signs_with(algorithm: str, key: object) -> bool:
    """Whether `key` is a public key of `algorithm`'s kind and strength."""
    if algorithm == "RS256":
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if algorithm == "ES256":  # P-256 only
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    return algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey)


def _max_age(cache_control: str) -> float:
    """Cache-Control's max-age in seconds; infinite when there is none (the
    caller bounds it); 0 for no-cache or no-store."""
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    found = _MAX_AGE.search(cache_control)
    return float(found.group(1)) if found else math.inf
