"""rstitch serving layer: Ray Serve deployments and the gRPC API around rstitch_core.

Importing this package imports neither ray nor grpc; each module imports what it needs, so the
Python client (services.client) works without ray installed.
"""
