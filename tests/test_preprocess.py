"""The DALI pipeline (CPU operators) against the plain PIL + numpy reference, on real images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from scripts import preprocess
from scripts.dali_runner import synchronous_pipeline

# In normalized units (pixel / 255 / std; 0.1 ~= 6 intensity levels). Both resize with an antialiasing
# triangle filter, but DALI's and PIL's differ at hard edges when downscaling (up to ~25 levels on a
# few edge pixels); elsewhere the two agree to about one level.
MEAN_ABS_TOLERANCE = 0.01
P99_ABS_TOLERANCE = 0.1
MAX_ABS_TOLERANCE = 0.5


def run_dali(spec, images: list[bytes]) -> np.ndarray:
    pipeline = synchronous_pipeline(preprocess.serialize(spec, "cpu"))
    pipeline.feed_input(spec.input_name, [np.frombuffer(b, np.uint8) for b in images])
    (out,) = pipeline.run()
    return out.as_array()


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def exif_rotated(image: Image.Image) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to display)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(heldout):
    """Held-out JPEGs plus PNG, BMP and grayscale/odd-sized variants (sizes that round both ways)."""
    jpegs = [path.read_bytes() for _, path in heldout[:20]]
    base = Image.open(heldout[0][1]).convert("RGB")
    extra = [
        encode(base, "PNG"),
        encode(base, "BMP"),
        encode(base.convert("L"), "JPEG"),
        encode(base.resize((97, 131)), "PNG"),
        encode(base.resize((333, 250)), "PNG"),
        encode(base.resize((64, 64)), "PNG"),
        exif_rotated(base.resize((160, 100))),
    ]
    return jpegs + extra


def test_dali_cpu_matches_the_reference(bundle, images):
    spec = bundle.preprocess
    dali = run_dali(spec, images)
    reference = np.stack([preprocess.reference(b, spec) for b in images])
    assert dali.shape == reference.shape == (len(images), spec.channels, *spec.crop)
    errors = np.abs(dali - reference)
    p99 = np.percentile(errors, 99)
    print(f"DALI vs reference: mean abs {errors.mean():.5f}, p99 {p99:.4f}, max abs {errors.max():.4f}")
    assert errors.mean() <= MEAN_ABS_TOLERANCE
    assert p99 <= P99_ABS_TOLERANCE
    assert errors.max() <= MAX_ABS_TOLERANCE


def test_reference_normalizes_with_the_configured_mean_and_std(bundle):
    spec = bundle.preprocess
    gray = Image.new("RGB", (200, 100), (128, 128, 128))
    out = preprocess.reference(encode(gray, "PNG"), spec)
    expected = (128 / 255 - np.asarray(spec.mean)) / np.asarray(spec.std)
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-5)


@pytest.mark.parametrize(("size", "expected"), [((200, 100), (146, 73)), ((100, 200), (73, 146)), ((97, 131), (73, 99))])
def test_resized_size_keeps_the_aspect_ratio(size, expected):
    assert preprocess.resized_size(*size, 73) == expected


def test_gpu_flavor_decodes_with_nvjpeg(bundle):
    """The `gpu` graph is built with `mixed` decoding; serializing it needs a GPU (see test_gpu_*)."""
    from nvidia.dali import Pipeline

    pipeline = Pipeline(batch_size=2, num_threads=1, device_id=None)
    with pipeline:
        output = preprocess.dali_preprocessing(bundle.preprocess, preprocess.DECODE_DEVICE["gpu"])
    assert output.device == "gpu"


@pytest.mark.gpu
def test_gpu_pipeline_matches_the_reference(bundle, images):
    spec = bundle.preprocess
    pipeline = synchronous_pipeline(preprocess.serialize(spec, "gpu"), device_id=0)
    pipeline.feed_input(spec.input_name, [np.frombuffer(b, np.uint8) for b in images])
    (out,) = pipeline.run()
    reference = np.stack([preprocess.reference(b, spec) for b in images])
    errors = np.abs(out.as_cpu().as_array() - reference)
    # nvJPEG's IDCT and the GPU resampler differ more from libjpeg-turbo than the CPU path does.
    assert errors.mean() <= 2 * MEAN_ABS_TOLERANCE
