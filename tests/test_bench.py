"""The benchmark's config variants (generated in code) are valid repositories; the numbers come from `make bench`."""

from __future__ import annotations

from scripts import bench
from scripts.config import load_bundle, read_config
from scripts.constants import CONFIG_FILENAME, LOCAL
from scripts.validate import validate


def test_resnet_variant_is_a_valid_224_pixel_1000_class_bundle(tmp_path):
    layout, _ = bench.resnet_layout(tmp_path, progress=lambda m: None)
    repo = layout.repository
    bundle = load_bundle(repo)
    assert bundle.classifier.input_dims == (3, 224, 224) and len(bundle.classifier.labels) == 1000
    assert bundle.preprocess.resize_shorter == 256
    assert validate(repo).ok(strict=True)


def test_no_batching_variant_only_drops_dynamic_batching(built, bundle, tmp_path):
    variant = bench.without_batching(built.flavor(LOCAL), tmp_path / "variant")
    for name in bundle.configs:
        original = read_config(built.flavor(LOCAL) / name / CONFIG_FILENAME)
        changed = read_config(variant / name / CONFIG_FILENAME)
        assert not changed.HasField("dynamic_batching")
        original.ClearField("dynamic_batching")
        assert changed == original
    assert validate(variant, require_artifacts=True).ok(strict=True)


def test_realistic_jpegs_are_640_by_480():
    import io

    from PIL import Image

    images = bench.realistic_jpegs(3)
    assert len(set(images)) == 3
    assert all(Image.open(io.BytesIO(data)).size == bench.IMAGE_SIZE for data in images)


def test_no_check_variant_hands_the_images_straight_to_the_preprocessing(built, bundle, tmp_path):
    variant = bench.without_image_check(built.flavor(LOCAL), tmp_path / "variant")
    unchecked = load_bundle(variant)
    assert unchecked.check is None and not (variant / bundle.check.model_name).exists()
    assert set(unchecked.configs) == set(bundle.configs) - {bundle.check.model_name}
    assert validate(variant, require_artifacts=True).ok(strict=True)
