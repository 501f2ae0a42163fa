"""The client's exceptions: one base class, four cases, messages that say what to do."""

from __future__ import annotations


class ClientError(Exception):
    """Base class. `source` names the image concerned, when there is one."""

    transient = False  # worth retrying

    def __init__(self, message: str, source: str | None = None):
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class ServerUnavailable(ClientError):
    """The server cannot be reached or is overloaded (retried with backoff)."""

    transient = True


class ModelNotReady(ClientError):
    """The server is up but does not serve the model (unknown, loading, or failed to load)."""


class InvalidImage(ClientError):
    """The image was refused, by the client's checks or by the server's decoder (never retried)."""


class InferenceError(ClientError):
    """The server failed the request for another reason (timeout, internal error, bad request)."""
