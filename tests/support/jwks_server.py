"""A JWKS endpoint (RFC 7517) for tests, and the signing keys it publishes.

`JwksServer` serves `GET /jwks.json` over real HTTP on a loopback port, from
an event loop in a thread of its own: a test blocked in a synchronous call
(ServiceProcess.start polls the service's health) cannot stall the fetch a
service makes meanwhile. The test switches the published keys (a rotation),
makes the endpoint fail, and counts the requests it received.

`SigningKey` is an identity provider's key: it mints tokens with its `kid`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from chat_service.auth import DEV_SCOPES
from tests.support.emulators import EmulatorServer

JWKS_PATH = "/jwks.json"


@dataclass(frozen=True, eq=False)
class SigningKey:
    kid: str
    algorithm: str  # RS256, ES256 or EdDSA
    private_key: Any

    @classmethod
    def new(cls, kid: str = "", algorithm: str = "RS256") -> SigningKey:
        private_key: Any
        if algorithm == "RS256":
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif algorithm == "ES256":
            private_key = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "EdDSA":
            private_key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(algorithm)
        return cls(kid or f"key-{uuid.uuid4().hex[:8]}", algorithm, private_key)

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWKS entry."""
        public = self.private_key.public_key()
        kind: Any = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}
        entry: dict[str, Any] = json.loads(kind[self.algorithm].to_jwk(public))
        entry.pop("key_ops", None)
        return {**entry, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def mint(
        self,
        tenant: str,
        *,
        subject: str = "tester",
        scopes: Iterable[str] = DEV_SCOPES,
        ttl: int = 3600,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "sub": subject,
            "tenant_id": tenant,
            "scope": " ".join(sorted(scopes)),
            "iat": now,
            "exp": now + ttl,
            **claims,
        }
        return jwt.encode(
            payload,
            self.private_key,
            algorithm=self.algorithm,
            headers={"kid": self.kid if kid is None else kid},
        )


class JwksServer:
    """See the module's docstring. Use as a context manager (`with`)."""

    def __init__(self, *keys: SigningKey) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = [key.jwk() for key in keys]
        self._requests = 0
        self._status = 200
        self._cache_control: str | None = None
        self._raw: bytes | None = None
        self._released: asyncio.Event | None = None  # set: requests held until then
        self._drip: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------ what the test steers

    def publish(self, *keys: SigningKey, extra: Iterable[Any] = ()) -> None:
        """Serve these keys from now on (and `extra` raw entries after them)."""
        with self._lock:
            self._entries = [*(key.jwk() for key in keys), *extra]

    def serve_raw(self, body: bytes | None) -> None:
        """Answer 200 with this body instead of the key set (None: the key set)."""
        with self._lock:
            self._raw = body

    def fail_with(self, status: int) -> None:
        """Answer every request with this HTTP status (200: serve again)."""
        with self._lock:
            self._status = status

    def hold(self) -> None:
        """Keep requests waiting, unanswered, until `release()`."""
        with self._lock:
            self._released = asyncio.Event()

    def release(self) -> None:
        with self._lock:
            released, self._released = self._released, None
        if released is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(released.set)

    def drip(self, interval: float | None) -> None:
        """Answer 200 but send the body one byte per `interval` seconds, never
        finishing (None: answer at once again): no single read is slow."""
        with self._lock:
            self._drip = interval

    def cache_for(self, cache_control: str | None) -> None:
        with self._lock:
            self._cache_control = cache_control

    @property
    def requests(self) -> int:
        """Requests received so far (failed ones too)."""
        with self._lock:
            return self._requests

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return self._server.origin + JWKS_PATH

    # ------------------------------------------------------------ serving

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._requests += 1
            status, entries, cache_control = self._status, self._entries, self._cache_control
            raw, drip, released = self._raw, self._drip, self._released
        if released is not None:
            await released.wait()
        if drip is not None:
            return await self._dribble(request, drip)
        if status != 200:
            return web.Response(status=status, text="unavailable")
        if raw is not None:
            return web.Response(body=raw, content_type="application/json")
        headers = {"Cache-Control": cache_control} if cache_control else {}
        return web.json_response({"keys": entries}, headers=headers)

    async def _dribble(self, request: web.Request, interval: float) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"keys": [')
        # Until the client gives up (the write fails), or the test or the
        # server stops it.
        while self._drip is not None and not self._stopping():
            await asyncio.sleep(interval)
            await response.write(b" ")
        return response

    def _stopping(self) -> bool:
        return self._server is not None and self._server.stopping.is_set()

    def start(self) -> JwksServer:
        app = web.Application()
        app.router.add_get(JWKS_PATH, self._serve)
        self._server = EmulatorServer(app)
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                assert self._server is not None
                loop.run_until_complete(self._server.start())
            except BaseException as error:  # reported to start()
                failure.append(error)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._server.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="jwks-server", daemon=True)
        self._thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving: requests are refused (connection refused) from now on."""
        self.release()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> JwksServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def serving(*keys: SigningKey) -> Iterator[JwksServer]:
    with JwksServer(*keys) as server:
        yield server
