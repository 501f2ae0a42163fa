"""Python client for the image-classification ensemble.

    from client import ImageClassifierClient

    with ImageClassifierClient("localhost:8001") as classifier:
        for result in classifier.classify(["cat.jpg"], top_k=3):
            print(result.source, result.top.label, result.top.score)
"""

from client.api import (
    DEFAULT_MODEL,
    ClassificationError,
    ImageClassifierClient,
    ImageResult,
    Prediction,
)

__all__ = ["DEFAULT_MODEL", "ClassificationError", "ImageClassifierClient", "ImageResult", "Prediction"]
