"""Shared parts of the abuse suite (tests/e2e/test_abuse_*.py).

Each abuse module starts one real service (`AbuseTarget.start`) and throws
hostile input at it from outside, over real gRPC. Whatever the input, an
answer must be clear: one of the status codes the case allows, never
INTERNAL or UNKNOWN, never a hang (every call has a deadline), and an
INVALID_ARGUMENT names the field and quotes at most a short prefix of the
bad value. After the abuse the target checks what must still hold: the
server is SERVING, a victim tenant's conversation stays invisible to the
abusers, and every message the service acknowledged (the `Ledger`) is still
listed, in order, without gaps.

Unary calls here are synchronous (Hypothesis drives plain functions);
the stream modules use grpc.aio against the same target.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, content_pb2, resources_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, settings

from tests.support.grpc_client import Metadata, RichError, bearer, rich_error
from tests.support.service import ServiceProcess, ServiceStore

Code = grpc.StatusCode
Response = TypeVar("Response")

# Deadline of every unary call: far above any honest answer, so hitting it
# means the server hung.
CALL_TIMEOUT = 15.0
# Answers that are never acceptable, whatever the input.
NEVER = frozenset({Code.INTERNAL, Code.UNKNOWN, Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE})
# An error text may quote a short prefix of bad input, never all of a huge
# one; the message (which lists the violated fields) may be longer.
MAX_ERROR_TEXT = 1024
MAX_ERROR_MESSAGE = 4096
# gRPC refuses metadata past 8 KiB (soft limit: some calls fail) and 16 KiB
# (hard): the status message and the base64 of the details must fit.
MAX_TRAILER_BYTES = 8 * 1024
# Codes the service itself chooses: they must carry the rich status.
_RICH_CODES = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
    }
)
CHAT_SERVICE = "chatbot.chat.v1.ChatService"
# Logged by the error interceptor for what became INTERNAL, and by the
# stream reader for a frame it could not handle.
_UNEXPECTED_IN_LOG = re.compile(r"unexpected error in|reading frames failed|Traceback")


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings of the suite: few examples, the same ones on every
    run (CI reproduces what a developer saw), no shrinking (each example is
    a round trip to a real server; a failure names its input instead)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            # Module fixtures: one server for all examples, by design.
            HealthCheck.function_scoped_fixture,
        ],
    )


# ------------------------------------------------------------------ outcomes


@dataclass(frozen=True)
class Outcome:
    """How a call ended: its code, and the decoded rich status of an error."""

    code: Code
    response: Any = None
    error: grpc.RpcError | None = None
    status: RichError | None = None
    # Bytes of the status trailers (message + base64 of the details).
    trailer_bytes: int = 0

    @property
    def details(self) -> str:
        if self.error is None:
            return ""
        call = cast(grpc.Call, self.error)
        return str(call.details() or "")


def outcome_of(error: grpc.RpcError) -> Outcome:
    call = cast(grpc.Call, error)
    status: RichError | None = None
    details = b""
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            details = value if isinstance(value, bytes) else value.encode()
            status = rich_error(cast(grpc.aio.AioRpcError, error))
    size = len((call.details() or "").encode()) + math.ceil(len(details) / 3) * 4
    return Outcome(code=call.code(), error=error, status=status, trailer_bytes=size)


def attempt(call: Callable[..., Response], request: Any, metadata: Metadata) -> Outcome:
    """Make a unary call (with the suite's deadline) and say how it ended."""
    try:
        response = call(request, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        return outcome_of(error)
    return Outcome(code=Code.OK, response=response)


def check(
    outcome: Outcome,
    allowed: Collection[Code],
    *,
    case: str,
    field: str | None = None,
    secrets: Iterable[str] = (),
) -> Outcome:
    """Assert that `outcome` is a clear answer: one of `allowed`, with the
    rich status where the service chose the code, naming `field` (a prefix
    of a violation's path) on INVALID_ARGUMENT, short error texts, and no
    `secrets` (another tenant's data) anywhere in them."""
    where = f"{case}: got {outcome.code.name} {outcome.details[:300]!r}"
    assert outcome.code not in NEVER, where
    assert outcome.code in allowed, f"{where}; expected one of {sorted(c.name for c in allowed)}"
    if outcome.code is Code.OK:
        return outcome
    status = outcome.status
    if outcome.code in _RICH_CODES:
        assert status is not None, f"{where}; no google.rpc.Status details"
    if status is None:
        return outcome
    assert outcome.trailer_bytes <= MAX_TRAILER_BYTES, (
        f"{where}; status trailers of {outcome.trailer_bytes} bytes"
    )
    assert len(status.message) <= MAX_ERROR_MESSAGE, f"{where}; a message of {len(status.message)}"
    texts = [status.message, *(d for _, d in status.field_violations), *status.metadata.values()]
    for text in texts[1:]:
        assert len(text) <= MAX_ERROR_TEXT, f"{where}; an error text of {len(text)} characters"
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"{where}; the error text shows another tenant's data"
    if outcome.code is Code.INVALID_ARGUMENT:
        assert status.field_violations, f"{where}; INVALID_ARGUMENT without field violations"
        if field is not None:
            assert any(f.startswith(field) for f in status.fields), (
                f"{where}; violations {status.fields} do not name {field!r}"
            )
    return outcome


def refused(
    call: Callable[..., Any],
    request: Any,
    metadata: Metadata,
    *,
    case: str,
    allowed: Collection[Code] = (Code.INVALID_ARGUMENT,),
    field: str | None = None,
) -> Outcome:
    """`attempt` then `check`; the common shape of an abuse case."""
    return check(attempt(call, request, metadata), allowed, case=case, field=field)


class Findings:
    """Failed cases of a loop, collected so that one run reports them all."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    @contextmanager
    def case(self, name: str) -> Iterator[None]:
        try:
            yield
        except AssertionError as failure:
            self.failures.append(f"{name}: {str(failure).splitlines()[0]}")

    def assert_none(self) -> None:
        assert not self.failures, f"{len(self.failures)} case(s) failed:\n" + "\n".join(
            self.failures
        )


# ------------------------------------------------------------------ tenants


@dataclass(frozen=True)
class Tenant:
    id: str
    metadata: Metadata


@dataclass(frozen=True)
class Victim:
    """A tenant whose conversation no other tenant may ever see."""

    tenant: Tenant
    conversation_id: str
    secret: str


@dataclass
class Ledger:
    """Every message the service acknowledged, by tenant and conversation."""

    acked: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    auth: dict[str, Metadata] = field(default_factory=dict)

    def record(self, tenant: Tenant, conversation_id: str, message_id: str, sequence: int) -> None:
        assert sequence >= 1, f"acknowledged {message_id!r} with sequence {sequence}"
        self.auth[tenant.id] = tenant.metadata
        known = self.acked.setdefault((tenant.id, conversation_id), {})
        assert known.get(message_id, sequence) == sequence, (
            f"{message_id!r} acknowledged at {known[message_id]} and then at {sequence}"
        )
        known[message_id] = sequence

    def record_send(self, tenant: Tenant, response: pb.SendMessageResponse) -> None:
        metadata = response.processing_metadata
        self.record(tenant, response.conversation_id, response.message_id, metadata.sequence)
        for reply, sequence in zip(response.replies, metadata.reply_sequences, strict=True):
            assert reply.sequence == sequence
            self.record(tenant, response.conversation_id, reply.message_id, sequence)

    def verify(self, stub: chat_service_pb2_grpc.ChatServiceStub) -> int:
        """Each recorded conversation lists 1..N without gaps, every
        acknowledged message at its sequence; returns how many were checked."""
        checked = 0
        for (tenant_id, conversation_id), acked in sorted(self.acked.items()):
            metadata = self.auth[tenant_id]
            listed = list_all_messages(stub, metadata, conversation_id)
            sequences = [m.sequence for m in listed]
            assert sequences == list(range(1, len(listed) + 1)), (
                f"{tenant_id}/{conversation_id}: sequences {sequences[:50]} have gaps or repeats"
            )
            at = {m.message_id: m.sequence for m in listed}
            for message_id, sequence in acked.items():
                assert at.get(message_id) == sequence, (
                    f"{tenant_id}/{conversation_id}: acknowledged {message_id!r} at {sequence}, "
                    f"listed at {at.get(message_id)}"
                )
                checked += 1
            for message in listed:
                if message.role == resources_pb2.MESSAGE_ROLE_USER:
                    assert not _STRAY_CONTROLS.search(message.content.text), (
                        f"{conversation_id}#{message.sequence}: stored text keeps control "
                        f"characters: {message.content.text[:80]!r}"
                    )
            conversation = stub.GetConversation(
                pb.GetConversationRequest(conversation_id=conversation_id),
                metadata=metadata,
                timeout=CALL_TIMEOUT,
            ).conversation
            assert conversation.last_sequence == len(listed), conversation_id
        return checked


# Stored text is normalized: no control characters but "\n" and "\t".
_STRAY_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def list_all_messages(
    stub: chat_service_pb2_grpc.ChatServiceStub, metadata: Metadata, conversation_id: str
) -> list[resources_pb2.Message]:
    messages: list[resources_pb2.Message] = []
    token = ""
    for _ in range(1000):
        page = stub.ListMessages(
            pb.ListMessagesRequest(
                conversation_id=conversation_id, page_size=1000, page_token=token
            ),
            metadata=metadata,
            timeout=CALL_TIMEOUT,
        )
        messages.extend(page.messages)
        token = page.next_page_token
        if not token:
            return messages
    raise AssertionError(f"{conversation_id}: the pages never end")


# ------------------------------------------------------------------ target


def text_request(text: str, **fields: Any) -> pb.SendMessageRequest:
    return pb.SendMessageRequest(
        user_id=fields.pop("user_id", "user-1"),
        channel=fields.pop("channel", resources_pb2.CHANNEL_WEB),
        content=content_pb2.MessageContent(type=content_pb2.MESSAGE_TYPE_TEXT, text=text),
        **fields,
    )


# Signs a token for (tenant, scopes or None for all).
Minter = Callable[[str, Iterable[str] | None], str]


class AbuseTarget:
    """One real service for a whole abuse module, its victim and its ledger."""

    def __init__(self, process: ServiceProcess, mint: Minter | None = None) -> None:
        self.process = process
        self._mint = mint
        self.channel = grpc.insecure_channel(process.address)
        self.stub = chat_service_pb2_grpc.ChatServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.ledger = Ledger()
        self.victim = self._make_victim()

    @classmethod
    def start(
        cls,
        data_dir: Path,
        env: dict[str, str] | None = None,
        *,
        store: ServiceStore | None = None,
        mint: Minter | None = None,
    ) -> AbuseTarget:
        """`mint` signs tokens the service trusts (default: its dev key)."""
        process = ServiceProcess(data_dir, env, name="abuse", store=store)
        process.start()
        try:
            return cls(process, mint)
        except BaseException:
            process.kill()
            raise

    @property
    def address(self) -> str:
        return self.process.address

    def close(self) -> None:
        self.channel.close()
        self.process.stop()

    def tenant(self, hint: str = "abuser", *, scopes: Iterable[str] | None = None) -> Tenant:
        slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40] or "abuser"
        tenant_id = f"{slug}-{uuid.uuid4().hex[:10]}"
        return Tenant(tenant_id, bearer(self.token(tenant_id, scopes=scopes)))

    def token(self, tenant_id: str, *, scopes: Iterable[str] | None = None) -> str:
        if self._mint is not None:
            return self._mint(tenant_id, scopes)
        if scopes is None:
            return self.process.token(tenant_id)
        return self.process.token(tenant_id, scopes=scopes)

    def send(self, tenant: Tenant, request: pb.SendMessageRequest) -> pb.SendMessageResponse:
        """A SendMessage that must succeed; recorded in the ledger."""
        response: pb.SendMessageResponse = self.stub.SendMessage(
            request, metadata=tenant.metadata, timeout=CALL_TIMEOUT
        )
        self.ledger.record_send(tenant, response)
        return response

    def _make_victim(self) -> Victim:
        tenant = self.tenant("victim")
        secret = f"victim-secret-{uuid.uuid4().hex}"
        sent = self.send(tenant, text_request(f"my card is {secret}", message_id="victim-1"))
        return Victim(tenant, sent.conversation_id, secret)

    # ---------------------------------------------------------------- checks

    def assert_healthy(self) -> None:
        for service in ("", CHAT_SERVICE):
            reply = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service

    def assert_victim_hidden(self, attacker: Tenant) -> None:
        """The victim's conversation does not exist for `attacker`."""
        victim, stub, auth = self.victim, self.stub, attacker.metadata
        cid = victim.conversation_id
        for name, call, request in (
            (
                "GetConversation",
                stub.GetConversation,
                pb.GetConversationRequest(conversation_id=cid),
            ),
            ("ListMessages", stub.ListMessages, pb.ListMessagesRequest(conversation_id=cid)),
        ):
            check(
                attempt(call, request, auth),
                {Code.NOT_FOUND},
                case=f"{name} of another tenant's conversation",
                secrets=[victim.secret],
            )
        export = stub.ExportConversation(
            pb.ExportConversationRequest(conversation_id=cid, format=pb.EXPORT_FORMAT_JSON_LINES),
            metadata=auth,
            timeout=CALL_TIMEOUT,
        )
        try:
            chunks = list(export)
        except grpc.RpcError as error:
            check(outcome_of(error), {Code.NOT_FOUND}, case="ExportConversation of another's")
        else:
            raise AssertionError(f"exported another tenant's conversation: {chunks[:1]}")
        for query in (victim.secret, ""):
            found = check(
                attempt(
                    stub.ListConversations,
                    pb.ListConversationsRequest(search_query=query, page_size=100),
                    auth,
                ),
                {Code.OK},
                case="ListConversations",
            ).response
            assert cid not in {c.conversation_id for c in found.conversations}
            assert victim.secret not in str(found)

    def server_log_problems(self) -> list[str]:
        """Lines of the server's log that tell of an unexpected error."""
        return [
            line for line in self.process.logs().splitlines() if _UNEXPECTED_IN_LOG.search(line)
        ]

    def final_checks(self) -> None:
        """What must hold after a module's abuse (its last test runs it)."""
        self.assert_healthy()
        checked = self.ledger.verify(self.stub)
        assert checked >= 1  # the victim's message, at least
        listed = list_all_messages(
            self.stub, self.victim.tenant.metadata, self.victim.conversation_id
        )
        assert self.victim.secret in listed[0].content.text
        problems = self.server_log_problems()
        assert not problems, "the server logged unexpected errors:\n" + "\n".join(problems[:20])
