"""Adapters: the outside world, each implementing a port of chat_service.ports."""
