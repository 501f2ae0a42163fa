"""Triton python-backend model (local flavor): the classifier's ONNX model run with ONNX Runtime.

Copied to `<classifier>/1/model.py` by the build, beside `model.onnx` and the project's `constants.py`,
which it imports (Triton's python backend puts the version folder on the import path). Tensor names
come from the model config Triton passes in. Requests batched together by Triton run as one ONNX
Runtime call.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from constants import ONNX_MODEL, ORT_THREADS


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        options = ort.SessionOptions()
        threads = config.get("parameters", {}).get(ORT_THREADS, {}).get("string_value")
        if threads:
            options.intra_op_num_threads = int(threads)
        # Idle intra-op threads spin-wait for the next batch by default, on cores the DALI pipeline and the
        # other models' processes need between batches (measured here: the demo served 311 images/s with
        # two spinning threads, 357-384 without spinning). The onnxruntime backend has no such option.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_MODEL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            scores = self.session.run([self.output_name], {self.input_name: np.concatenate(batches)})[0]
        except Exception as exc:  # ONNX Runtime errors carry no request context: add it
            error = pb_utils.TritonError(f"{self.output_name}: ONNX Runtime failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for batch in batches:
            rows = scores[start : start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, rows)]))
        return responses
