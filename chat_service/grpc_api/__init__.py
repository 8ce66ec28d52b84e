"""The gRPC face of the service: servicers, request/response mapping,
interceptors, statuses.

The resources, content, enums and events it maps are chat_service.protomap's,
shared with the adapters that speak protobuf (tests/unit/test_layering.py).
"""
