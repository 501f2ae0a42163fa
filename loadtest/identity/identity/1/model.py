"""Triton python-backend model: each request's input back as its output (the cheapest possible model)."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("ECHO", pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy())])
                for r in requests]
