"""Where a triton-bundle server listens and how it is addressed: the wire-level facts.

The client owns them because application teams install it alone; the server start-up
(`scripts.serve`), the tools and the load tests import them from here. Each default can be moved
by an environment variable, the same one `make serve` reads.
"""

from __future__ import annotations

import os

DEFAULT_MODEL = "image_classifier"  # the committed ensemble's folder name (a test keeps the two equal)
PROTOCOLS = ("grpc", "http")

DEFAULT_ADDRESS = "127.0.0.1"  # loopback: nothing is exposed unless someone chooses to
ADDRESS_ENV = "TRITON_ADDRESS"
# Triton's own defaults.
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
PORT_ENV = {"http": "TRITON_HTTP_PORT", "grpc": "TRITON_GRPC_PORT", "metrics": "TRITON_METRICS_PORT"}

# The header Triton's restricted APIs check (`--http-restricted-api=...:admin-key=<key>`); over gRPC
# Triton expects it with the prefix "triton-grpc-protocol-".
ADMIN_HEADER = "admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"


def admin_header(protocol: str) -> str:
    """The name of the admin-key header for `protocol` ("grpc" or "http")."""
    return ADMIN_HEADER if protocol == "http" else GRPC_HEADER_PREFIX + ADMIN_HEADER


def address() -> str:
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def port(kind: str) -> int:
    """The port of `kind` ("http", "grpc", "metrics"): its environment variable, else Triton's default."""
    value = os.environ.get(PORT_ENV[kind]) or str(DEFAULT_PORTS[kind])
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{PORT_ENV[kind]}={value!r} is not a port number")
    return int(value)


def url(protocol: str) -> str:
    """host:port of the server `make serve` starts, for `protocol`."""
    return f"{address()}:{port(protocol)}"


def metrics_url() -> str:
    return f"http://{address()}:{port('metrics')}/metrics"


def admin_key() -> str | None:
    return os.environ.get(ADMIN_KEY_ENV) or None
