"""Triton python-backend model (local flavor): the serialized CPU DALI preprocessing pipeline.

Copied to `<preprocess>/1/model.py` by the build, beside `model.dali` (the same pipeline the DALI
backend runs in the `cpu` flavor) and the helpers it imports (`dali_runner.py`, `image_formats.py`,
`constants.py`: Triton's python backend puts the version folder on the import path). Each row
of a request's input is one encoded image; requests batched together by Triton run as one pipeline
call. Unlike the DALI backend, which fails a whole batch when one image is bad, a failed batch is
retried request by request so only the request with the bad image gets an error.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from constants import DALI_PIPELINE
from dali_runner import synchronous_pipeline
from image_formats import SUPPORTED_TEXT, UNSUPPORTED, image_format, refusal


def describe(sample: np.ndarray) -> str:
    """Why an encoded image may have failed, from its leading bytes (and its length less zero padding)."""
    nonzero = np.flatnonzero(sample)
    sample = sample[: nonzero[-1] + 1] if len(nonzero) else sample[:0]
    head = sample[:16].tobytes()
    if not len(sample):
        return "the image is empty (0 bytes)"
    name = image_format(head)
    if name in UNSUPPORTED:
        return f"{name} images are not supported (send {SUPPORTED_TEXT})"
    if name is not None:
        return f"{name} image of {len(sample)} bytes is corrupt or truncated"
    return f"not a recognized image format (first bytes: {head[:8].hex(' ')}, {len(sample)} bytes)"


def dali_reason(exc: Exception) -> str:
    """The last line DALI gives that names the cause (its message starts with a pipeline traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if "no longer valid" not in line]
    return causes[-1] if causes else type(exc).__name__


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.serialized = (Path(args["model_repository"]) / args["model_version"] / DALI_PIPELINE).read_bytes()
        # The build serialized the pipeline with the config's max_batch_size and num_threads; like the DALI
        # backend, the config's num_threads at load time wins, so a reload with a new value takes it.
        threads = config.get("parameters", {}).get("num_threads", {}).get("string_value")
        self.num_threads = int(threads) if threads else None
        self.pipeline = synchronous_pipeline(self.serialized, num_threads=self.num_threads)
        self.batch_size = self.pipeline.max_batch_size

    def _run(self, samples):
        """Preprocess a list of 1-D uint8 arrays; returns [len(samples), C, H, W] float32."""
        outputs = []
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start : start + self.batch_size]
            try:
                self.pipeline.feed_input(self.input_name, chunk)
                (batch,) = self.pipeline.run()
            except Exception:
                # After an error the DALI pipeline object is unusable.
                self.pipeline = synchronous_pipeline(self.serialized, num_threads=self.num_threads)
                raise
            outputs.append(batch.as_array())
        return np.concatenate(outputs)

    def _samples(self, request):
        images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
        # Rows of one request share a length: shorter images arrive zero-padded, which decoders skip
        # (as the DALI backend does). One image per request is exact; Triton batches requests itself.
        return [np.ascontiguousarray(row) for row in images]

    def _error(self, samples, exc):
        for index, sample in enumerate(samples):
            try:
                self._run([sample])
            except Exception:
                return pb_utils.TritonError(
                    refusal(self.input_name, index, f"{describe(sample)} (DALI: {dali_reason(exc)})"),
                    pb_utils.TritonError.INVALID_ARG,
                )
        return pb_utils.TritonError(f"{self.input_name}: preprocessing failed: {dali_reason(exc)}")

    def _response(self, pixels):
        return pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, pixels)])

    def execute(self, requests):
        per_request = [self._samples(r) for r in requests]
        try:
            pixels = self._run([s for samples in per_request for s in samples])
        except Exception:
            return [self._execute_one(samples) for samples in per_request]
        responses, start = [], 0
        for samples in per_request:
            responses.append(self._response(pixels[start : start + len(samples)]))
            start += len(samples)
        return responses

    def _execute_one(self, samples):
        try:
            return self._response(self._run(samples))
        except Exception as exc:
            return pb_utils.InferenceResponse(error=self._error(samples, exc))
