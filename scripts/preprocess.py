"""Preprocessing: encoded image bytes in, normalized FP32 CHW tensor out.

The DALI graph is defined once, in `scripts/dali_pipeline.py`; this module gives it the values of the
preprocessing model's config (`PreprocessSpec`) for each flavor: the gpu flavor decodes with nvJPEG
(`mixed`), the cpu and local flavors with CPU operators. The local flavor runs the pipeline serialized
here (`model.dali`); the cpu and gpu flavors carry a generated `dali.py` that the DALI backend
serializes with the server's own DALI when it loads the model, so the DALI of the machine that builds
never has to match the server's. `reference` is the same computation in plain PIL + numpy, used to
check DALI and to train the demo model.
"""

from __future__ import annotations

import inspect
import io

import numpy as np

from scripts import dali_pipeline
from scripts.config import PreprocessSpec, generated_header
from scripts.constants import CPU, DALI_SCRIPT, GPU, LOCAL

# DALI decodes on the CPU for these flavors and with nvJPEG (`mixed`: CPU parse, GPU decode) on the GPU.
DECODE_DEVICE = {GPU: "mixed", CPU: "cpu", LOCAL: "cpu"}
PIPELINE_MODULE = dali_pipeline.__name__.rpartition(".")[2] + ".py"  # its file name beside dali.py


def graph_arguments(spec: PreprocessSpec, decoder: str) -> dict:
    """The arguments of `dali_pipeline.preprocessing` for `spec`, by name."""
    return {"input_name": spec.input_name, "resize_shorter": spec.resize_shorter, "crop": spec.crop, "mean": spec.mean,
            "std": spec.std, "decoder": decoder}


def dali_preprocessing(spec: PreprocessSpec, device: str):
    """The graph of `spec`, inside an active pipeline; returns the output DataNode."""
    return dali_pipeline.preprocessing(**graph_arguments(spec, device))


def serialize_cpu_pipeline(spec: PreprocessSpec) -> bytes:
    """The pipeline with CPU operators, serialized (`model.dali`): what the local flavor's python model runs."""
    from nvidia.dali import Pipeline

    pipeline = Pipeline(batch_size=spec.max_batch_size, num_threads=spec.num_threads, device_id=None)
    with pipeline:
        pipeline.set_outputs(dali_preprocessing(spec, DECODE_DEVICE[LOCAL]))
    return pipeline.serialize()


def dali_definition(spec: PreprocessSpec, flavor: str, source: str) -> dict[str, str]:
    """{file name: text} of the version folder of `flavor`'s DALI model: `dali.py`, the pipeline with this
    config's values, which the DALI backend autoserializes, and the graph module it imports."""
    arguments = ", ".join(f"{name}={value!r}" for name, value in graph_arguments(spec, DECODE_DEVICE[flavor]).items())
    by = "`python -m scripts gpu-files` (the compose builder)" if flavor == GPU else "`make build`"
    header = "".join(f"# {line}\n" for line in generated_header(flavor, source, by).splitlines())
    definition = f"""{header}# The DALI backend runs this file when it loads the model: the server's DALI serializes the pipeline.
import os
import sys

# Loaded by file path: the graph module beside this file is not on the import path otherwise.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dali_pipeline import preprocessing  # noqa: E402
from nvidia.dali import pipeline_def  # noqa: E402
from nvidia.dali.plugin.triton import autoserialize  # noqa: E402


# device_id=None: the backend gives each model instance its device when it deserializes.
@autoserialize
@pipeline_def(batch_size={spec.max_batch_size}, num_threads={spec.num_threads}, device_id=None)
def pipeline():
    return preprocessing({arguments})
"""
    return {DALI_SCRIPT: definition, PIPELINE_MODULE: inspect.getsource(dali_pipeline)}


def center_crop_box(width: int, height: int, crop: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the center crop, rounded half up as DALI does."""
    crop_h, crop_w = crop
    return int((width - crop_w) / 2 + 0.5), int((height - crop_h) / 2 + 0.5)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    scale = shorter / min(width, height)
    if width <= height:
        return shorter, int(height * scale + 0.5)
    return int(width * scale + 0.5), shorter


# The parts of the spec the preprocessing computes with (the rest say how it runs: threads, batch size, names).
COMPUTED_FROM = ("crop", "resize_shorter", "mean", "std")


def reference(encoded: bytes, spec: PreprocessSpec) -> np.ndarray:
    """The same preprocessing in PIL + numpy: [channels, height, width] float32."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(encoded)) as image:
        # DALI's decoder applies the EXIF orientation: so must the reference.
        image = ImageOps.exif_transpose(image).convert("RGB")
        width, height = resized_size(*image.size, spec.resize_shorter)
        image = image.resize((width, height), Image.BILINEAR)
        left, top = center_crop_box(width, height, spec.crop)
        pixels = np.asarray(image, dtype=np.float32)[top : top + spec.crop[0], left : left + spec.crop[1]]
    mean = 255.0 * np.asarray(spec.mean, dtype=np.float32)
    std = 255.0 * np.asarray(spec.std, dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1).astype(np.float32)
