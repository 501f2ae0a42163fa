"""`ImageClassifierClient`: encoded images in, typed top-k predictions out, over gRPC or HTTP.

The client sends the image bytes as they are (decoding happens on the server) and asks for labels
through Triton's classification extension (`class_count`). Tensor names come from the server's
model metadata, so the client follows the deployed configs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import BinaryIO, Iterable, Union

import numpy as np

DEFAULT_MODEL = "image_classifier"
PROTOCOLS = ("grpc", "http")
ImageInput = Union[str, os.PathLike, bytes, BinaryIO]


class ClassificationError(RuntimeError):
    """The server could not classify an image; `source` names it."""

    def __init__(self, source: str, message: str):
        self.source = source
        super().__init__(f"{source}: {message}")


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclasses.dataclass(frozen=True)
class ImageResult:
    source: str
    predictions: tuple[Prediction, ...]  # best first

    @property
    def top(self) -> Prediction:
        return self.predictions[0]


def _module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    elif protocol == "http":
        import tritonclient.http as module
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    return module


def default_url(protocol: str) -> str:
    port = os.environ.get("TRITON_GRPC_PORT", "8001") if protocol == "grpc" else os.environ.get("TRITON_HTTP_PORT", "8000")
    return f"localhost:{port}"


def read_image(image: ImageInput, index: int) -> tuple[str, bytes]:
    """(a name for messages, the encoded bytes)."""
    if isinstance(image, bytes):
        return f"<bytes #{index}>", image
    if hasattr(image, "read"):
        return getattr(image, "name", f"<file #{index}>"), image.read()
    path = Path(image)
    return str(path), path.read_bytes()


def parse_classification(entry: bytes | str) -> Prediction:
    """Triton's classification string "score:index:label" (the label may itself contain ':')."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    score, index, label = text.split(":", 2)
    return Prediction(label=label, index=int(index), score=float(score))


class ImageClassifierClient:
    """A client of the ensemble. One image per request; use as a context manager."""

    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str = DEFAULT_MODEL,
                 timeout: float = 30.0, headers: dict[str, str] | None = None):
        self.protocol = protocol
        self._triton = _module(protocol)
        self.url = url or default_url(protocol)
        self.model = model
        self.timeout = timeout
        self.headers = headers or {}
        if protocol == "grpc":
            self._client = self._triton.InferenceServerClient(self.url)
        else:
            self._client = self._triton.InferenceServerClient(self.url, connection_timeout=timeout, network_timeout=timeout)
        self._names: tuple[str, str] | None = None

    def tensor_names(self) -> tuple[str, str]:
        """(input, output) names of the model, from the server's metadata (fetched once)."""
        if self._names is None:
            try:
                metadata = self._client.get_model_metadata(self.model, headers=self.headers)
            except OSError as exc:  # the HTTP client lets socket errors through
                raise ConnectionError(f"{self.url}: {exc}") from exc
            if self.protocol == "grpc":
                self._names = (metadata.inputs[0].name, metadata.outputs[0].name)
            else:
                self._names = (metadata["inputs"][0]["name"], metadata["outputs"][0]["name"])
        return self._names

    def classify_one(self, image: ImageInput, top_k: int = 5, index: int = 0) -> ImageResult:
        source, data = read_image(image, index)
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        input_name, output_name = self.tensor_names()
        tensor = self._triton.InferInput(input_name, [1, len(data)], "UINT8")
        tensor.set_data_from_numpy(np.frombuffer(data, dtype=np.uint8)[None, :])
        output = self._triton.InferRequestedOutput(output_name, class_count=top_k)
        timeout = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        from tritonclient.utils import InferenceServerException

        try:
            result = self._client.infer(self.model, [tensor], outputs=[output], headers=self.headers, **timeout)
        except InferenceServerException as exc:
            raise ClassificationError(source, exc.message()) from exc
        except OSError as exc:
            raise ClassificationError(source, f"connection to {self.url} failed: {exc}") from exc
        entries = result.as_numpy(output_name).reshape(-1)
        return ImageResult(source, tuple(parse_classification(e) for e in entries))

    def classify(self, images: Iterable[ImageInput], top_k: int = 5) -> list[ImageResult]:
        return [self.classify_one(image, top_k, index) for index, image in enumerate(images)]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "ImageClassifierClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
