"""Channel connectors: one module per platform, each a ChannelSender.

The web widget has none: it reads its conversation over the service's own
RPCs (StreamConversation, ListMessages), so a reply is delivered by being
stored (see DeliveryQueue's `delivered_by_storing`).
"""
