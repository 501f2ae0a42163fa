"""Preprocessing: encoded image bytes in, normalized FP32 CHW tensor out.

`dali_preprocessing` is the one definition of the preprocessing, used by every flavor: the `gpu`
flavor runs it with nvJPEG (`mixed` decode), `cpu` and `local` with CPU operators. `reference`
is the same computation in plain PIL + numpy, used to check DALI and to train the demo model.
Sizes and normalization come from the preprocessing model's config (`PreprocessSpec`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from scripts.config import PreprocessSpec
from scripts.constants import CPU, GPU, LOCAL

# DALI decodes on the CPU for these flavors and with nvJPEG (`mixed`: CPU parse, GPU decode) on the GPU.
DECODE_DEVICE = {GPU: "mixed", CPU: "cpu", LOCAL: "cpu"}


def dali_preprocessing(spec: PreprocessSpec, device: str):
    """Build the DALI graph inside an active pipeline; returns the output DataNode.

    decode (RGB) -> resize the shorter side to `resize_shorter` -> center crop -> normalize -> CHW float.
    """
    from nvidia.dali import fn, types

    encoded = fn.external_source(name=spec.input_name, dtype=types.UINT8, ndim=1)
    images = fn.decoders.image(encoded, device=device, output_type=types.RGB)
    images = fn.resize(images, resize_shorter=spec.resize_shorter)
    return fn.crop_mirror_normalize(
        images,
        crop=spec.crop,
        mean=[255.0 * m for m in spec.mean],
        std=[255.0 * s for s in spec.std],
        dtype=types.FLOAT,
        output_layout="CHW",
    )


def build_pipeline(spec: PreprocessSpec, flavor: str):
    """A DALI pipeline for `flavor` (one of constants.FLAVORS) with the batch size of the config."""
    from nvidia.dali import Pipeline

    device = DECODE_DEVICE[flavor]
    pipeline = Pipeline(
        batch_size=spec.max_batch_size,
        num_threads=spec.num_threads,
        device_id=0 if device == "mixed" else None,
    )
    with pipeline:
        pipeline.set_outputs(dali_preprocessing(spec, device))
    return pipeline


def recipe(spec: PreprocessSpec) -> dict:
    """What a serialized pipeline bakes in: written beside a `model.dali` that outlives the build (the
    gpu flavor's, in model_repository/), so that a config edit it no longer fits is noticed. The DALI
    backend takes num_threads from the config itself: not part of it."""
    return {field: getattr(spec, field) for field in (*COMPUTED_FROM, "input_name", "max_batch_size")}


def recipe_path(pipeline: Path) -> Path:
    return pipeline.with_name(pipeline.name + ".json")


def serialize(spec: PreprocessSpec, flavor: str) -> bytes:
    """The serialized pipeline (`model.dali`). The `gpu` flavor needs a GPU to serialize."""
    return build_pipeline(spec, flavor).serialize()


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
