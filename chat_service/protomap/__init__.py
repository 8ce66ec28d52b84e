"""Mapping between the protobuf contracts and the domain, for every layer
that speaks protobuf: the gRPC API (grpc_api/), the MCP Engine client
(adapters/engine/) and the Kafka records (adapters/kafka/).

Plain functions, one per direction needed: enums (enums.py), message
content (content.py), shared resources such as Conversation and Message
(resources.py), the published ConversationEvent (events.py) and protobuf's
well-known types (wellknown.py). What only the gRPC API needs (request
mapping, request enums, status translation) stays in grpc_api/.

Inbound mapping does not validate and never raises on a message the wire
can carry (NaN, huge numbers, unknown enum numbers all pass through to the
domain validator, which turns them into INVALID_ARGUMENT naming the field).
The one exception is a Timestamp outside the range a datetime can hold: it
raises InvalidArgument naming the field (see wellknown.timestamp_to_datetime).

Outbound mapping leaves out what callers must not see: a conversation's
tenant and version, a message's tenant and request fingerprint.
"""
