"""The DALI pipeline (CPU operators) against the plain PIL + numpy reference, on real images."""

from __future__ import annotations

import inspect
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts import dali_pipeline, preprocess
from scripts.constants import CPU, DALI_SCRIPT, GPU
from scripts.dali_runner import autoserialize, synchronous_pipeline
from scripts.repository import dali_model_files

# In normalized units (pixel / 255 / std; 0.1 ~= 6 intensity levels). Both resize with an antialiasing
# triangle filter, but DALI's and PIL's differ at hard edges when downscaling (up to ~25 levels on a
# few edge pixels); elsewhere the two agree to about one level.
MEAN_ABS_TOLERANCE = 0.01
P99_ABS_TOLERANCE = 0.1
MAX_ABS_TOLERANCE = 0.5


def run_dali(spec, images: list[bytes]) -> np.ndarray:
    pipeline = synchronous_pipeline(preprocess.serialize_cpu_pipeline(spec))
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


def dali_model(bundle, flavor: str, folder: Path) -> Path:
    """The version folder of `flavor`'s DALI model as the build writes it; returns its dali.py."""
    folder.mkdir(parents=True, exist_ok=True)
    for filename, text in dali_model_files(bundle, flavor).items():
        (folder / filename).write_text(text)
    return folder / DALI_SCRIPT


def test_the_gpu_and_cpu_pipelines_are_one_graph_that_differs_only_by_the_decoder(bundle):
    """Both dali.py files import the same graph module, this project's own, and pass it the same values:
    only the decoder device (and the flavor named in the header) may differ."""
    gpu, cpu = dali_model_files(bundle, GPU), dali_model_files(bundle, CPU)
    assert gpu[preprocess.PIPELINE_MODULE] == cpu[preprocess.PIPELINE_MODULE] == inspect.getsource(dali_pipeline)
    differing = [(a, b) for a, b in zip(gpu[DALI_SCRIPT].splitlines(), cpu[DALI_SCRIPT].splitlines(), strict=True) if a != b]
    assert len(differing) == 2, differing
    (gpu_header, cpu_header), (gpu_call, cpu_call) = differing
    assert gpu_header.replace("`python -m scripts gpu-files` (the compose builder) (gpu flavor)",
                              "`make build` (cpu flavor)") == cpu_header
    assert "decoder='mixed'" in gpu_call and gpu_call.replace("decoder='mixed'", "decoder='cpu'") == cpu_call


def test_both_dali_py_serialize_as_the_backend_does_and_the_cpu_one_equals_the_local_flavor(bundle, images, tmp_path):
    """Serialized the DALI backend's way (no GPU needed for the gpu one): the cpu flavor's pipeline gives
    exactly what the local flavor's model.dali gives; the gpu one records the nvJPEG decoder."""
    spec = bundle.preprocess
    serialized = {flavor: autoserialize(dali_model(bundle, flavor, tmp_path / flavor)) for flavor in (GPU, CPU)}
    assert b"mixed" in serialized[GPU] and b"mixed" not in serialized[CPU]
    pipeline = synchronous_pipeline(serialized[CPU])
    pipeline.feed_input(spec.input_name, [np.frombuffer(b, np.uint8) for b in images])
    (out,) = pipeline.run()
    np.testing.assert_array_equal(out.as_array(), run_dali(spec, images))


# The gpu pipeline against the cpu one, in normalized units (about 0.017 per intensity level): nvJPEG's
# IDCT and upsampling differ from libjpeg-turbo's by a level or two on some pixels, and the resize and
# crop run the same kernels' GPU versions.
GPU_MEAN_ABS_TOLERANCE = 0.02
GPU_P99_ABS_TOLERANCE = 0.1
GPU_MAX_ABS_TOLERANCE = 0.5


@pytest.mark.gpu
def test_gpu_nvjpeg_pipeline_matches_the_cpu_pipeline(bundle, images, tmp_path):
    """On the GPU box: the gpu flavor's dali.py, serialized as the DALI backend does, run on the GPU on real
    images (JPEG, PNG, BMP, grayscale, EXIF-rotated), against the CPU pipeline the other flavors serve."""
    spec = bundle.preprocess
    pipeline = synchronous_pipeline(autoserialize(dali_model(bundle, GPU, tmp_path)), device_id=0)
    pipeline.feed_input(spec.input_name, [np.frombuffer(b, np.uint8) for b in images])
    (out,) = pipeline.run()
    gpu = out.as_cpu().as_array()
    cpu = run_dali(spec, images)
    assert gpu.shape == cpu.shape == (len(images), spec.channels, *spec.crop)
    errors = np.abs(gpu - cpu)
    p99 = np.percentile(errors, 99)
    print(f"nvJPEG pipeline vs CPU pipeline on {len(images)} images: mean abs {errors.mean():.5f}, p99 {p99:.4f}, "
          f"max abs {errors.max():.4f}")
    assert errors.mean() <= GPU_MEAN_ABS_TOLERANCE
    assert p99 <= GPU_P99_ABS_TOLERANCE
    assert errors.max() <= GPU_MAX_ABS_TOLERANCE
