"""The 24-hour customer-service window (chat_service/domain/service_window.py)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from chat_service.domain.enums import Channel, MessageRole
from chat_service.domain.service_window import (
    SERVICE_WINDOW,
    last_inbound_time,
    latest_inbound,
    outside_window_reason,
    window_closes_at,
    window_open,
)
from tests.builders import T0, make_conversation, make_message


def test_the_window_is_open_for_24_hours_after_the_users_message() -> None:
    assert timedelta(hours=24) == SERVICE_WINDOW
    assert window_open(T0, T0)
    assert window_open(T0, T0 + timedelta(hours=23, minutes=59, seconds=59))
    assert not window_open(T0, window_closes_at(T0))  # closed at its end
    assert not window_open(T0, T0 + timedelta(days=3))


def test_no_message_from_the_user_opens_no_window() -> None:
    assert not window_open(None, T0)


def test_a_user_message_from_the_future_keeps_the_window_open() -> None:
    # Clock skew between the platform and us must not refuse a fresh reply.
    assert window_open(T0 + timedelta(minutes=2), T0)


def test_the_window_runs_from_the_platforms_time_when_it_is_earlier() -> None:
    conversation = make_conversation(channel=Channel.WHATSAPP)
    stored_late = make_message(conversation, 1, created_at=T0 + timedelta(hours=2), client_time=T0)
    assert last_inbound_time(stored_late) == T0
    # A client clock ahead of ours is not believed.
    ahead = make_message(conversation, 1, created_at=T0, client_time=T0 + timedelta(hours=5))
    assert last_inbound_time(ahead) == T0
    assert last_inbound_time(dataclasses.replace(ahead, client_time=None)) == T0


def test_the_latest_inbound_message_is_the_users_newest() -> None:
    conversation = make_conversation(channel=Channel.MESSENGER)
    first = make_message(conversation, 1)
    second = make_message(conversation, 3)
    replies = [make_message(conversation, n, role=MessageRole.BOT) for n in (2, 4)]
    assert latest_inbound([replies[1], second, replies[0], first]) == second
    assert latest_inbound(replies) is None
    assert latest_inbound([]) is None


@pytest.mark.parametrize(
    ("channel", "needed"),
    [(Channel.WHATSAPP, "a template message is required"), (Channel.MESSENGER, "message tag")],
)
def test_the_refusal_says_what_the_platform_needs_instead(channel: Channel, needed: str) -> None:
    reason = outside_window_reason(channel)
    assert reason.startswith("outside the 24-hour")
    assert needed in reason
