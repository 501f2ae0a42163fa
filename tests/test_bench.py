"""The benchmark's config variants (generated in code) are valid repositories; the numbers come from `make bench`."""

from __future__ import annotations

from scripts import bench, demo
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


def test_camera_frames_are_640_by_480():
    import io

    from PIL import Image

    images = demo.camera_frames(3)
    assert len(set(images)) == 3
    assert all(Image.open(io.BytesIO(data)).size == demo.CAMERA_FRAME for data in images)


def test_no_check_variant_hands_the_images_straight_to_the_preprocessing(built, bundle, tmp_path):
    variant = bench.without_image_check(built.flavor(LOCAL), tmp_path / "variant")
    unchecked = load_bundle(variant)
    assert unchecked.check is None and not (variant / bundle.check.model_name).exists()
    assert set(unchecked.configs) == set(bundle.configs) - {bundle.check.model_name}
    assert validate(variant, require_artifacts=True).ok(strict=True)


def _rows(model: str, flavor: str, inprocess: tuple[float, ...], served: tuple[float, ...]) -> list[bench.Row]:
    rows = [bench.Row(model, "-", "in-process", "-", batch, rate, 1.0, 1.0, 1.0)
            for batch, rate in zip((1, 8, 32), inprocess, strict=True)]
    for mode in ("served", "served, no check"):
        rows += [bench.Row(model, flavor, mode, "grpc", concurrency, rate * (1.25 if "check" in mode else 1.0), 2.0, 2.0, 2.0)
                 for concurrency, rate in zip((1, 4, 16), served, strict=True)]
    return rows


def test_summary_reports_each_models_best_served_over_best_in_process_rate():
    rows = (_rows("demo", LOCAL, (100, 300, 400), (150, 340, 320))
            + _rows(bench.RESNET50, LOCAL, (20, 24, 22), (12, 21, 18)))
    line = bench.summary(rows, [LOCAL], build_s=30.0)
    fields = dict(field.split("=") for field in line.removeprefix("summary: ").split())
    assert fields["served_vs_inprocess"] == "0.85"  # 340 / 400
    assert fields["served_vs_inprocess_resnet50"] == "0.88"  # 21 / 24
    assert fields["batching_gain"] == f"{320 / 150:.2f}" and fields["check_cost_pct"] == "20.0"
    assert "served_vs_inprocess_resnet50" not in bench.summary(_rows("demo", LOCAL, (1, 2, 3), (1, 2, 3)), [LOCAL], 1.0)


def test_summary_takes_the_median_of_the_paired_rounds_where_they_were_measured():
    rows = _rows("demo", LOCAL, (100, 300, 400), (150, 340, 320))
    for round_, (alone, served) in enumerate(((400, 320), (300, 270), (500, 430)), start=1):  # 0.80, 0.90, 0.86
        rows += [bench.Row("demo", "-", bench.PAIRED_IN_PROCESS, "-", 32, alone, 1.0, 1.0, 1.0, round=round_),
                 bench.Row("demo", LOCAL, bench.PAIRED_SERVED, "grpc", 16, served, 2.0, 2.0, 2.0, round=round_)]
    fields = dict(field.split("=") for field in bench.summary(rows, [LOCAL], 1.0).removeprefix("summary: ").split())
    assert fields["served_vs_inprocess"] == "0.86"
    assert fields["batching_gain"] == f"{320 / 150:.2f}", "the paired rows stay out of the sweep's figures"


def test_the_served_sweep_reaches_as_many_images_in_flight_as_the_largest_in_process_batch(built, bundle):
    runner = bench.InProcess(built, demo.camera_frames(1))
    assert runner.batch_sizes()[-1] == bundle.preprocess.max_batch_size
    assert runner.concurrencies() == (1, 4, 16, bundle.preprocess.max_batch_size)
