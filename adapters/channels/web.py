"""The web widget's channel.

The widget has no platform API to call: it reads its conversation over
StreamConversation / ListMessages, where a stored reply is visible as soon
as it is committed. So handing a reply to the web channel succeeds at once
(SENT); DELIVERED and READ come from the widget's read receipts.
"""

from __future__ import annotations

from chat_service.domain.model import Conversation, Message
from chat_service.ports import DeliveryReceipt


class WebSender:
    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt:
        return DeliveryReceipt()
