"""Abuse suite: tampered page tokens and watch resume tokens.

Tokens are opaque and tamper-evident: a token the service did not issue
(bit flips, truncations, another RPC's or another request's token, base64
of JSON nested 10k deep, megabytes of it) is INVALID_ARGUMENT naming the
field (a resume token past the log may be FAILED_PRECONDITION), never
INTERNAL. A change the service cannot tell from the original (base64's
unused padding bits) may be taken, but then it must mean exactly what the
original meant. Another tenant's token never shows that tenant's data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import resources_pb2
from hypothesis import given
from hypothesis import strategies as st

from tests.support.abuse import (
    AbuseTarget,
    Code,
    Findings,
    Outcome,
    Tenant,
    attempt,
    check,
    fuzz_settings,
    outcome_of,
    text_request,
)
from tests.support.abuse_inputs import b64url, forged_tokens, semantic_mutations, token_mutations
from tests.support.service import ServiceStore

WATCH_TIMEOUT = 5.0
TOKEN_REFUSED = frozenset({Code.INVALID_ARGUMENT})
RESUME_REFUSED = frozenset({Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION})


@pytest.fixture(scope="module")
def target(
    service_store: ServiceStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AbuseTarget]:
    target = AbuseTarget.start(tmp_path_factory.mktemp("abuse-tokens"))
    yield target
    target.close()


@dataclass(frozen=True)
class Pages:
    """A tenant with enough data for several pages, and genuine tokens."""

    tenant: Tenant
    conversations: list[str]  # newest first
    conversations_token: str  # ListConversations(page_size=2)
    busy: str  # a conversation with several messages
    other: str  # another conversation with several messages
    messages_token: str  # ListMessages(busy, page_size=2)


@pytest.fixture(scope="module")
def pages(target: AbuseTarget) -> Pages:
    tenant = target.tenant("pages")
    conversations = []
    for n in range(5):
        conversations.append(target.send(tenant, text_request(f"hello {n}")).conversation_id)
    busy, other = conversations[0], conversations[1]
    for n in range(2):
        for cid in (busy, other):
            target.send(tenant, text_request(f"more {n}", conversation_id=cid))
    first = target.stub.ListConversations(
        pb.ListConversationsRequest(page_size=2), metadata=tenant.metadata, timeout=10
    )
    messages = target.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=busy, page_size=2),
        metadata=tenant.metadata,
        timeout=10,
    )
    assert first.next_page_token
    assert messages.next_page_token
    return Pages(
        tenant,
        conversations[::-1],
        first.next_page_token,
        busy,
        other,
        messages.next_page_token,
    )


def list_conversations(
    target: AbuseTarget, tenant: Tenant, token: str, **fields: object
) -> Outcome:
    request = pb.ListConversationsRequest(page_size=2, page_token=token, **fields)  # type: ignore[arg-type]
    return attempt(target.stub.ListConversations, request, tenant.metadata)


def list_messages(
    target: AbuseTarget, tenant: Tenant, cid: str, token: str, **fields: object
) -> Outcome:
    request = pb.ListMessagesRequest(conversation_id=cid, page_size=2, page_token=token, **fields)  # type: ignore[arg-type]
    return attempt(target.stub.ListMessages, request, tenant.metadata)


def all_mutations(token: str) -> Iterator[tuple[str, str]]:
    yield from token_mutations(token)
    yield from semantic_mutations(token)


def conversation_ids(outcome: Outcome) -> list[str]:
    return [c.conversation_id for c in outcome.response.conversations]


def message_ids(outcome: Outcome) -> list[str]:
    return [m.message_id for m in outcome.response.messages]


# ------------------------------------------------------------------ page tokens


def test_tampered_page_tokens_are_refused_or_mean_the_same(
    target: AbuseTarget, pages: Pages
) -> None:
    tenant = pages.tenant
    genuine = conversation_ids(list_conversations(target, tenant, pages.conversations_token))
    genuine_messages = message_ids(list_messages(target, tenant, pages.busy, pages.messages_token))
    assert genuine
    assert genuine_messages
    findings = Findings()
    for name, token in all_mutations(pages.conversations_token):
        with findings.case(f"ListConversations with a page token {name}"):
            outcome = check(
                list_conversations(target, tenant, token),
                TOKEN_REFUSED | {Code.OK},
                case="refused",
                field="page_token",
            )
            if outcome.code is Code.OK:
                assert conversation_ids(outcome) == genuine, "taken, with another meaning"
    for name, token in all_mutations(pages.messages_token):
        with findings.case(f"ListMessages with a page token {name}"):
            outcome = check(
                list_messages(target, tenant, pages.busy, token),
                TOKEN_REFUSED | {Code.OK},
                case="refused",
                field="page_token",
            )
            if outcome.code is Code.OK:
                assert message_ids(outcome) == genuine_messages, "taken, with another meaning"
    findings.assert_none()
    target.assert_healthy()


@pytest.mark.parametrize(
    ("name", "token"), list(forged_tokens()), ids=[n for n, _ in forged_tokens()]
)
def test_forged_page_tokens_are_invalid_argument(
    target: AbuseTarget, pages: Pages, name: str, token: str
) -> None:
    tenant = pages.tenant
    check(
        list_conversations(target, tenant, token),
        TOKEN_REFUSED,
        case=f"ListConversations page token: {name}",
        field="page_token",
    )
    check(
        list_messages(target, tenant, pages.busy, token),
        TOKEN_REFUSED,
        case=f"ListMessages page token: {name}",
        field="page_token",
    )


def test_a_token_is_only_good_for_the_request_that_got_it(
    target: AbuseTarget, pages: Pages
) -> None:
    tenant = pages.tenant
    cases = [
        (
            "a ListConversations token in ListMessages",
            list_messages(target, tenant, pages.busy, pages.conversations_token),
        ),
        (
            "a ListMessages token in ListConversations",
            list_conversations(target, tenant, pages.messages_token),
        ),
        (
            "another conversation's token",
            list_messages(target, tenant, pages.other, pages.messages_token),
        ),
        (
            "a token with another order",
            list_messages(
                target, tenant, pages.busy, pages.messages_token, order=pb.SORT_ORDER_DESCENDING
            ),
        ),
        (
            "a token with another filter",
            list_conversations(
                target,
                tenant,
                pages.conversations_token,
                status=resources_pb2.CONVERSATION_STATUS_ACTIVE,
            ),
        ),
        (
            "a token with another search",
            list_conversations(target, tenant, pages.conversations_token, search_query="hello"),
        ),
        (
            "a token of ListMessages as a resume token",
            _watch_outcome(target, tenant, pages.messages_token)[0],
        ),
    ]
    for name, outcome in cases:
        check(outcome, RESUME_REFUSED if "resume" in name else TOKEN_REFUSED, case=name)


def test_another_tenants_page_token_shows_nothing_of_theirs(
    target: AbuseTarget, pages: Pages
) -> None:
    stranger = target.tenant("stranger")
    mine = target.send(stranger, text_request("mine")).conversation_id
    outcome = check(
        list_conversations(target, stranger, pages.conversations_token),
        TOKEN_REFUSED | {Code.OK},
        case="another tenant's token",
    )
    if outcome.code is Code.OK:
        assert set(conversation_ids(outcome)) <= {mine}
    check(
        list_messages(target, stranger, pages.busy, pages.messages_token),
        {Code.NOT_FOUND, Code.INVALID_ARGUMENT},
        case="another tenant's conversation and token",
    )
    target.assert_victim_hidden(stranger)


@fuzz_settings(max_examples=60)
@given(
    token=st.one_of(
        st.text(min_size=1, max_size=200),
        st.binary(min_size=1, max_size=300).map(b64url),
        st.recursive(
            st.one_of(st.integers(), st.text(max_size=5), st.none()),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
            max_leaves=10,
        ).map(lambda v: b64url(repr(v).replace("'", '"').encode())),
    )
)
def test_random_page_tokens_are_invalid_argument(
    target: AbuseTarget, pages: Pages, token: str
) -> None:
    check(
        list_conversations(target, pages.tenant, token),
        TOKEN_REFUSED,
        case=f"page token {token!r}",
        field="page_token",
    )


# ------------------------------------------------------------------ resume tokens


def _watch_outcome(
    target: AbuseTarget, tenant: Tenant, token: str, *, want: int = 0, timeout: float = 2.0
) -> tuple[Outcome, list[pb.WatchConversationsResponse]]:
    """Resume a watch with `token`: how it ended (OK: still open after
    `want` events or `timeout`), and the events it replayed."""
    call = target.stub.WatchConversations(
        pb.WatchConversationsRequest(resume_token=token), metadata=tenant.metadata, timeout=timeout
    )
    events: list[pb.WatchConversationsResponse] = []
    try:
        for event in call:
            events.append(event)
            if len(events) >= want > 0:
                break
    except grpc.RpcError as error:
        outcome = outcome_of(error)
        # Our own deadline: the watch was open (and quiet) until then.
        return (Outcome(Code.OK) if outcome.code is Code.DEADLINE_EXCEEDED else outcome), events
    finally:
        call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave it untyped
    return Outcome(Code.OK), events


@dataclass(frozen=True)
class ResumeTokens:
    tenant: Tenant
    events: list[pb.WatchConversationsResponse]


@pytest.fixture(scope="module")
def resume(target: AbuseTarget) -> ResumeTokens:
    tenant = target.tenant("resume")
    call = target.stub.WatchConversations(
        pb.WatchConversationsRequest(), metadata=tenant.metadata, timeout=WATCH_TIMEOUT
    )
    call.initial_metadata()  # the watch listens
    target.send(tenant, text_request("one"))
    target.send(tenant, text_request("two"))
    events = []
    for event in call:
        events.append(event)
        if len(events) == 4:
            break
    call.cancel()  # type: ignore[no-untyped-call]
    return ResumeTokens(tenant, events)


def test_tampered_resume_tokens_are_refused_or_mean_the_same(
    target: AbuseTarget, resume: ResumeTokens
) -> None:
    first, *rest = resume.events
    expected = [e.event.event_id for e in rest]
    outcome, replay = _watch_outcome(target, resume.tenant, first.resume_token, want=len(rest))
    assert [e.event.event_id for e in replay] == expected  # the control
    findings = Findings()
    for name, token in all_mutations(first.resume_token):
        with findings.case(f"WatchConversations with a resume token {name}"):
            outcome, replay = _watch_outcome(target, resume.tenant, token, want=len(rest))
            check(outcome, RESUME_REFUSED | {Code.OK}, case="refused", field="resume_token")
            if outcome.code is Code.OK:
                replayed = [e.event.event_id for e in replay]
                assert replayed == expected, "taken, with another meaning"
    findings.assert_none()
    target.assert_healthy()


@pytest.mark.parametrize(
    ("name", "token"), list(forged_tokens()), ids=[n for n, _ in forged_tokens()]
)
def test_forged_resume_tokens_are_refused(
    target: AbuseTarget, resume: ResumeTokens, name: str, token: str
) -> None:
    outcome, replay = _watch_outcome(target, resume.tenant, token)
    check(outcome, RESUME_REFUSED, case=f"resume token: {name}", field="resume_token")
    assert replay == []


def test_another_tenants_resume_token_shows_nothing_of_theirs(
    target: AbuseTarget, resume: ResumeTokens
) -> None:
    stranger = target.tenant("stranger")
    outcome, replay = _watch_outcome(target, stranger, resume.events[0].resume_token, timeout=1.0)
    check(outcome, RESUME_REFUSED | {Code.OK}, case="another tenant's resume token")
    assert replay == [], "another tenant's events were replayed"


def test_zz_the_service_is_unharmed(target: AbuseTarget) -> None:
    target.final_checks()
