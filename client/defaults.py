"""Where a triton-bundle server listens and how it is addressed: the wire-level facts.

The client owns them because application teams install it alone; the server start-up
(`scripts.serve`), the tools and the load tests import them from here. Each default can be moved
by an environment variable, the same one `make serve` reads.
"""

from __future__ import annotations

import dataclasses
import os

DEFAULT_MODEL = "image_classifier"  # the committed ensemble's folder name (a test keeps the two equal)
PROTOCOLS = ("grpc", "http")

DEFAULT_ADDRESS = "127.0.0.1"  # loopback: nothing is exposed unless someone chooses to
ADDRESS_ENV = "TRITON_ADDRESS"  # the address `make serve` binds to
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "[::]")  # bind to every interface; connect through loopback
# Triton's own defaults.
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
PORT_ENV = {"http": "TRITON_HTTP_PORT", "grpc": "TRITON_GRPC_PORT", "metrics": "TRITON_METRICS_PORT"}

# The header Triton's restricted APIs check (`--http-restricted-api=...:admin-key=<key>`); over gRPC
# Triton expects it with the prefix "triton-grpc-protocol-".
ADMIN_HEADER = "admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"
# A file holding the key (a compose secret): what docker/serve.sh reads, and tools in containers too.
ADMIN_KEY_FILE_ENV = "TRITON_ADMIN_KEY_FILE"


class EnvironmentValueError(ValueError):
    """A TRITON_* variable holds something that is not an address or a port."""


def admin_header(protocol: str) -> str:
    """The name of the admin-key header for `protocol` ("grpc" or "http")."""
    return ADMIN_HEADER if protocol == "http" else GRPC_HEADER_PREFIX + ADMIN_HEADER


def admin_key() -> str | None:
    """$TRITON_ADMIN_KEY, else the content of the file $TRITON_ADMIN_KEY_FILE names, else None."""
    if os.environ.get(ADMIN_KEY_ENV):
        return os.environ[ADMIN_KEY_ENV]
    path = os.environ.get(ADMIN_KEY_FILE_ENV)
    if path:
        try:
            with open(path) as handle:
                return handle.read().strip() or None
        except OSError as exc:
            raise EnvironmentValueError(f"{ADMIN_KEY_FILE_ENV}={path}: cannot read the admin key ({exc.strerror})") from None
    return None


def parse_port(name: str, value: str) -> int:
    """`value` of the setting `name` as a TCP port (EnvironmentValueError when it is not one)."""
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise EnvironmentValueError(f"{name}={value!r} is not a port number")
    return int(value)


def _port(kind: str) -> int:
    return parse_port(PORT_ENV[kind], os.environ.get(PORT_ENV[kind]) or str(DEFAULT_PORTS[kind]))


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a server listens: one address, three ports."""

    address: str = DEFAULT_ADDRESS
    http: int = DEFAULT_PORTS["http"]
    grpc: int = DEFAULT_PORTS["grpc"]
    metrics: int = DEFAULT_PORTS["metrics"]

    @classmethod
    def from_env(cls) -> Endpoint:
        """Where `make serve` listens: $TRITON_ADDRESS and $TRITON_{HTTP,GRPC,METRICS}_PORT, else the defaults."""
        return cls(os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS, _port("http"), _port("grpc"), _port("metrics"))

    @property
    def host(self) -> str:
        """The address to connect to: the bound one, or loopback when the server binds to every interface."""
        return DEFAULT_ADDRESS if self.address in WILDCARD_ADDRESSES else self.address

    def url(self, protocol: str) -> str:
        """host:port for "grpc" or "http"."""
        return f"{self.host}:{self.grpc if protocol == 'grpc' else self.http}"

    @property
    def grpc_url(self) -> str:
        return self.url("grpc")

    @property
    def http_url(self) -> str:
        return self.url("http")

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics}/metrics"


def url(protocol: str) -> str:
    """host:port of the server `make serve` starts, for `protocol` (EnvironmentValueError on a bad port)."""
    return Endpoint.from_env().url(protocol)
