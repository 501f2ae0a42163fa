"""The `tritonserver` that the nvidia-pytriton wheel ships: where its parts are, and which release it is.

Serving (`scripts.serve`) starts it; the backend build (`scripts.backends`) compiles against its
backend API and links the libraries it already loads. The wheel renames its shared libraries
(auditwheel adds a hash: `libtritonserver-<hash>.so`), so they are found by pattern, never by name.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

DISTRIBUTION = "nvidia-pytriton"
# The wheel pyproject.toml pins, and the tritonserver inside it (NGC release 24.10: scripts/releases.py).
WHEEL_VERSION = "0.7.0"
SERVER_VERSION = "2.51.0"


class ServerError(RuntimeError):
    """The server cannot start, did not start, or died (the message says why, with its log's tail)."""


class TritonServerMissing(ServerError):
    """nvidia-pytriton (and so the tritonserver binary) is not installed, or not the expected layout."""


def pytriton_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise TritonServerMissing(f"{DISTRIBUTION} is not installed: `pip install -e .[local]` (or `make install`)") from None


def home() -> Path:
    """The wheel's tritonserver folder: bin/, backends/python/, python_backend_stubs/<python>/."""
    try:
        import pytriton
    except ImportError:
        raise TritonServerMissing(f"{DISTRIBUTION} is not installed: `pip install -e .[local]` (or `make install`)") from None
    return Path(pytriton.__file__).parent / "tritonserver"


def binary() -> Path:
    return home() / "bin" / "tritonserver"


def libraries() -> Path:
    """The folder of the shared libraries the binary loads (put it on LD_LIBRARY_PATH)."""
    return home().parent.parent / "nvidia_pytriton.libs"


def library(stem: str) -> Path:
    """The wheel's copy of `lib<stem>` (e.g. "tritonserver", "cudart"), whatever hash its name carries."""
    found = sorted(libraries().glob(f"lib{stem}-*.so*"))
    if len(found) != 1:
        raise TritonServerMissing(f"expected one lib{stem}-<hash>.so* in {libraries()}, found {[p.name for p in found]}")
    return found[0]
