"""A running server's admin side, through its HTTP API with the admin key (never printed or logged): what
`apply` and `tune` do to a live server (check it, read configs, load models with config overrides)."""

from __future__ import annotations

import json
from collections.abc import Callable

from client import defaults


class Refused(Exception):
    """Apply stops before anything changes live: the reason is the message."""


class Unreachable(Exception):
    """The server cannot be reached, or it refuses the admin key."""


class LiveServer:
    """The running server, through its HTTP API, with the admin key (never printed or logged)."""

    def __init__(self, url: str, admin_key: str | None):
        import tritonclient.http as httpclient

        self.url = url
        self.headers = {defaults.admin_header("http"): admin_key} if admin_key else {}
        self.client = httpclient.InferenceServerClient(url, connection_timeout=10.0, network_timeout=300.0)

    def _call(self, function: Callable, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return function(*args, headers=self.headers, **kwargs)
        except InferenceServerException as exc:
            if "restricted" in exc.message() or exc.status() in ("401", "403"):
                raise Unreachable(f"{self.url} refused the admin key ({exc.message()}): pass --admin-key or set "
                                  f"{defaults.ADMIN_KEY_ENV}") from None
            raise
        except OSError as exc:
            raise Unreachable(f"cannot reach the server at {self.url}: {exc}") from None

    def check(self) -> None:
        """Reachable, ready, the admin key accepted, and in explicit model control mode (else Unreachable/Refused)."""
        from tritonclient.utils import InferenceServerException

        if not self._call(self.client.is_server_ready):
            raise Unreachable(f"the server at {self.url} is not ready")
        self.index()
        try:  # A name no repository holds: explicit mode tries to load it, the other modes refuse to.
            self._call(self.client.load_model, "__apply_probe__")
        except InferenceServerException as exc:
            if "not allowed" in exc.message():
                raise Refused(f"the server at {self.url} does not load models on request ({exc.message()}): "
                              "restart it with TRITON_MODEL_CONTROL_MODE=explicit") from None

    def index(self) -> dict[str, str]:
        """{model: state} of the repository index."""
        return {entry["name"]: entry.get("state", "") for entry in self._call(self.client.get_model_repository_index)}

    def config(self, name: str) -> dict:
        return self._call(self.client.get_model_config, name)

    def load(self, name: str, config: dict | None = None) -> None:
        """Load `name` (a config override loads it with that config, whatever the repository holds)."""
        self._call(self.client.load_model, name, **({"config": json.dumps(config)} if config is not None else {}))

    def close(self) -> None:
        self.client.close()
