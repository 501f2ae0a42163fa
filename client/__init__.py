"""Python client for the image-classification ensemble.

    from client import ImageClassifierClient

    with ImageClassifierClient("127.0.0.1:8001") as classifier:
        for result in classifier.classify(["cat.jpg", "dog.png"], top_k=3):
            if result.ok:
                print(result.source, result.top.label, result.top.score)
            else:
                print(result.source, "failed:", result.error)

`AsyncImageClassifierClient` has the same methods as coroutines.
"""

from client.api import (
    AsyncImageClassifierClient,
    Health,
    ImageClassifierClient,
    ImageResult,
    ModelInfo,
    Prediction,
    RetryPolicy,
    TensorInfo,
    Tls,
)
from client.defaults import DEFAULT_MODEL
from client.errors import ClientError, InferenceError, InvalidImage, ModelNotReady, ServerUnavailable
from client.images import Limits

__all__ = [
    "DEFAULT_MODEL", "AsyncImageClassifierClient", "ClientError", "Health", "ImageClassifierClient", "ImageResult",
    "InferenceError", "InvalidImage", "Limits", "ModelInfo", "ModelNotReady", "Prediction", "RetryPolicy",
    "ServerUnavailable", "TensorInfo", "Tls",
]
