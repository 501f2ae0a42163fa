"""The image check (`client.image_formats.problem`), which the ensemble's first step runs on every image:
what it passes, what it refuses and why, and the pixel sizes it reads from headers, against Pillow."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from client.image_formats import declared_size, image_format, problem
from scripts import corpus
from tests.test_isolation import REASONS

MAX_PIXELS = 50_000_000


@pytest.fixture(scope="module")
def photos(heldout):
    return [path.read_bytes() for _, path in heldout[:3]]


def test_every_good_kind_passes_even_zero_padded(photos):
    for sample in corpus.good(photos):
        assert problem(sample.data, MAX_PIXELS) is None, sample.kind
        assert problem(sample.data + bytes(100), MAX_PIXELS) is None, f"{sample.kind}, zero-padded"


def test_every_bad_kind_is_refused_with_its_reason(photos):
    for sample in corpus.bad(photos[0]):
        reason = problem(sample.data, MAX_PIXELS)
        assert reason and REASONS[sample.kind] in reason, (sample.kind, reason)
    assert problem(corpus.undecodable(photos[0]).data, MAX_PIXELS) is None  # only a decoder can tell


def webp(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", **options)
    return buffer.getvalue()


def test_declared_sizes_are_the_ones_pillow_reads(photos):
    image = Image.open(io.BytesIO(photos[0])).convert("RGB").resize((123, 77))
    samples = [s.data for s in corpus.good(photos)]
    samples += [webp(image), webp(image, lossless=True), webp(image.convert("RGBA"), exact=True)]
    for data in samples:
        kind = image_format(data)
        assert declared_size(data, kind) == Image.open(io.BytesIO(data)).size, kind


def test_the_pixel_limit_is_the_configs(photos):
    large = next(s for s in corpus.good(photos) if s.kind == "jpeg-very-large")
    assert problem(large.data, 4000 * 3000) is None
    assert "over the limit of 11999999" in problem(large.data, 4000 * 3000 - 1)
