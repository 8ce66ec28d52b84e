"""The gRPC face of the service: servicers, proto<->domain mappers, interceptors, statuses.

The only package of the core that imports grpc and the generated protobuf code.
"""
