"""Triton python-backend model (every flavor): the image check, the ensemble's first step.

The DALI backend decodes a dynamic batch in one pipeline call and fails every request of the batch
when one image cannot be decoded (dali_backend src/dali_model_instance.cc; DALI has no skip-on-error),
with a status that does not say why. This step looks at each image before that can happen, without
decoding it (`image_formats.problem`: empty, unknown or unsupported format, cut short, no readable
pixel size, a declared size over the config's `max_pixels`): a request with such an image gets
INVALID_ARGUMENT and the reason, alone; every other request is handed on unchanged. Damage inside
complete image data is found only by the decoder (README "Bad images").

The build copies this file to `<imagecheck>/1/model.py` beside `image_formats.py`, which it imports
(Triton's python backend puts the version folder on the import path).
"""

import json

import triton_python_backend_utils as pb_utils

from image_formats import problem, refusal


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        # The build's validator has checked the value (scripts/config.py, IMAGE_CHECK_PARAMETERS).
        self.max_pixels = int(config["parameters"]["max_pixels"]["string_value"])

    def _response(self, request):
        images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
        for index, row in enumerate(images):
            reason = problem(row.tobytes(), self.max_pixels)
            if reason:
                error = pb_utils.TritonError(refusal(self.input_name, index, reason), pb_utils.TritonError.INVALID_ARG)
                return pb_utils.InferenceResponse(error=error)
        return pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, images)])

    def execute(self, requests):
        return [self._response(request) for request in requests]
