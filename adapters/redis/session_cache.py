"""Session cache and conversation-state cache over Redis.

Sessions: a JSON object per (tenant, session id), kept for an hour after
its last use (reading it restarts the hour, GETEX).

Conversation state: the engine's state of a conversation with the
conversation version it belongs to. Processes of the service put states
after their writes, and those puts can reach Redis out of order, so a put
never replaces a newer version (a Lua compare on the version). The version
is the one the state was last put with: the service puts a state only when
it changed (pipeline/state_cache.py), so an entry older than the
conversation may still hold its current state. Entries expire after
`state_ttl`.

An entry the cache cannot read (not JSON, not the shape it writes) is a
miss, logged. Redis down: every call raises CoordinationUnavailable, at once
while the breaker is open (breaker.py). A caller that can do
without the cache treats that as a miss; the cache does not decide for it,
because swallowing a failed put would leave an older state to be read once
Redis is back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from adapters.redis import script_runner
from adapters.redis.breaker import CircuitBreaker
from adapters.redis.client import DEFAULT_PREFIX
from adapters.redis.errors import coordination_errors
from chat_service.domain.conversation_codec import (
    conversation_state_from_dict,
    conversation_state_to_dict,
)
from chat_service.domain.model import ConversationState
from chat_service.ports import SESSION_TTL_SECONDS, CachedState

log = logging.getLogger(__name__)

# KEYS: entry; ARGV: version, state JSON, ttl ms. Equal versions overwrite
# (a retried put), older ones do not.
_PUT_STATE = """
local cached = tonumber(redis.call('HGET', KEYS[1], 'version'))
if cached and cached > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'state', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisSessionCache:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        session_ttl: float = SESSION_TTL_SECONDS,
        state_ttl: float = SESSION_TTL_SECONDS,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._redis = redis
        self._breaker = breaker or CircuitBreaker()
        self._prefix = prefix
        self._session_ttl_ms = round(session_ttl * 1000)
        self._state_ttl_ms = round(state_ttl * 1000)
        self._put_state = script_runner.for_client(redis).register(_PUT_STATE)

    async def get_session(self, tenant_id: str, session_id: str) -> dict[str, Any] | None:
        with coordination_errors("get session", self._breaker):
            raw = await self._redis.getex(
                self._session_key(tenant_id, session_id), px=self._session_ttl_ms
            )
        if raw is None:
            return None
        return _json_object(raw, "session")

    async def put_session(
        self, tenant_id: str, session_id: str, session: Mapping[str, Any]
    ) -> None:
        payload = json.dumps(dict(session), separators=(",", ":"), ensure_ascii=False)
        with coordination_errors("put session", self._breaker):
            await self._redis.set(
                self._session_key(tenant_id, session_id), payload, px=self._session_ttl_ms
            )

    async def get_conversation_state(
        self, tenant_id: str, conversation_id: str
    ) -> CachedState | None:
        with coordination_errors("get conversation state", self._breaker):
            version, state = await self._redis.hmget(
                self._state_key(tenant_id, conversation_id), ["version", "state"]
            )
        if version is None or state is None:
            return None
        data = _json_object(state, "conversation state")
        try:
            return (
                None
                if data is None
                else CachedState(int(version), conversation_state_from_dict(data))
            )
        except (ValueError, TypeError):
            log.warning("unreadable conversation state in the cache; taken as a miss")
            return None

    async def put_conversation_state(
        self, tenant_id: str, conversation_id: str, state: ConversationState, *, version: int
    ) -> bool:
        payload = json.dumps(
            conversation_state_to_dict(state), separators=(",", ":"), ensure_ascii=False
        )
        with coordination_errors("put conversation state", self._breaker):
            stored = await self._put_state(
                keys=[self._state_key(tenant_id, conversation_id)],
                args=[version, payload, self._state_ttl_ms],
            )
        return bool(stored)

    def _session_key(self, tenant_id: str, session_id: str) -> str:
        return f"{self._prefix}session:{tenant_id}/{session_id}"

    def _state_key(self, tenant_id: str, conversation_id: str) -> str:
        return f"{self._prefix}state:{tenant_id}/{conversation_id}"


def _json_object(raw: bytes | str, what: str) -> dict[str, Any] | None:
    """The JSON object `raw` holds, or None (logged) when it holds none: an
    entry written by another version of the service, or by hand, is a miss,
    not an error for the caller."""
    try:
        found = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        found = None
    if not isinstance(found, dict):
        log.warning("unreadable %s in the cache; taken as a miss", what)
        return None
    return found
