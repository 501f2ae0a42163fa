"""Reading the committed configs with Triton's protobuf schema, and the errors ops get."""

from __future__ import annotations

import re
import shutil

import pytest

from scripts.config import ConfigError, load_bundle, read_config, write_config
from tests.conftest import REPOSITORY


@pytest.fixture
def repo_copy(tmp_path):
    target = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, target)
    return target


def test_bundle_is_found_through_the_ensemble_wiring(bundle):
    assert (bundle.preprocess.model_name, bundle.classifier.model_name) == ("preprocess", "classifier")
    assert (bundle.preprocess.input_name, bundle.preprocess.output_name) == ("IMAGE", "PIXELS")
    assert bundle.classifier.labels == ("circle", "square", "triangle", "star", "cross", "ring")


def test_steps_are_found_by_wiring_not_by_order(repo_copy):
    path = repo_copy / "image_classifier" / "config.pbtxt"
    config = read_config(path)
    steps = list(config.ensemble_scheduling.step)
    del config.ensemble_scheduling.step[:]
    config.ensemble_scheduling.step.extend(reversed(steps))
    write_config(config, path)
    bundle = load_bundle(repo_copy)
    assert (bundle.preprocess.model_name, bundle.classifier.model_name) == ("preprocess", "classifier")


def test_typo_in_a_field_names_file_and_line(repo_copy):
    path = repo_copy / "classifier" / "config.pbtxt"
    path.write_text(path.read_text().replace("max_batch_size", "max_batch_sise"))
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    assert re.search(rf"{re.escape(str(path))}: not a valid Triton model config: \d+:\d+ : .*max_batch_sise", str(caught.value))


def test_labels_and_output_dims_must_agree(repo_copy):
    labels = repo_copy / "classifier" / "labels.txt"
    labels.write_text(labels.read_text() + "hexagon\n")
    with pytest.raises(ConfigError, match=r"output dims \[6\] do not match the 7 labels"):
        load_bundle(repo_copy)


def test_model_name_must_match_its_folder(repo_copy):
    path = repo_copy / "preprocess" / "config.pbtxt"
    path.write_text(path.read_text().replace('name: "preprocess"', 'name: "preproc"'))
    with pytest.raises(ConfigError, match='name "preproc" differs from its folder "preprocess"'):
        load_bundle(repo_copy)


def test_classifier_input_must_match_the_preprocessing_output(repo_copy):
    path = repo_copy / "classifier" / "config.pbtxt"
    path.write_text(path.read_text().replace("dims: [ 3, 64, 64 ]", "dims: [ 3, 96, 96 ]", 1))
    with pytest.raises(ConfigError, match=r"input dims \[3, 96, 96\] differ from the preprocessing output \[3, 64, 64\]"):
        load_bundle(repo_copy)


def test_resize_must_not_be_smaller_than_the_crop(repo_copy):
    path = repo_copy / "preprocess" / "config.pbtxt"
    path.write_text(path.read_text().replace('string_value: "73"', 'string_value: "32"'))
    with pytest.raises(ConfigError, match=r"resize_shorter=32 is smaller than the crop 64x64"):
        load_bundle(repo_copy)


def test_a_parameter_that_is_not_a_number_names_the_parameter(repo_copy):
    path = repo_copy / "preprocess" / "config.pbtxt"
    path.write_text(path.read_text().replace('string_value: "73"', 'string_value: "73px"'))
    with pytest.raises(ConfigError, match=r"\[parameters\[resize_shorter\]\]: expected a positive whole number, found \"73px\""):
        load_bundle(repo_copy)


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("content", "message"), [
    ("circle\r\nsquare\r\ntriangle\r\nstar\r\ncross\r\nring\r\n", "line 1 has a carriage return"),
    ("circle\nsquare\n\ntriangle\nstar\ncross\n", "line 3 is blank"),
    ("circle\nsquare \ntriangle\nstar\ncross\nring\n", "line 2 has leading or trailing spaces"),
    ("circle\nsquare\ntriangle\nstar\ncross\ncircle\n", "duplicate labels ['circle']"),
], ids=["crlf", "blank-line", "trailing-space", "duplicate"])
def test_labels_are_read_as_triton_reads_them(repo_copy, content, message):
    (repo_copy / "classifier" / "labels.txt").write_bytes(content.encode())
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_bundle(repo_copy)


@pytest.mark.parametrize(("model", "old", "new", "message"), [
    ("image_classifier", "max_batch_size: 32", "max_batch_size: 64", 'max_batch_size 64 exceeds 32 of step "preprocess"'),
    ("image_classifier", 'input_map { key: "PIXELS"', 'input_map { key: "PIX"', '"PIX" is not an input of model "classifier"'),
    ("image_classifier", 'output_map { key: "SCORES" value: "SCORES" }', 'output_map { key: "SCORES" value: "scores" }',
     'no step produces the ensemble tensor "SCORES"'),
    ("image_classifier", 'input_map { key: "PIXELS" value: "pixels" }', 'input_map { key: "PIXELS" value: "IMAGE" }',
     'no tensor flows from "preprocess" to "classifier"'),
    ("image_classifier", "dims: [ 6 ]", "dims: [ 7 ]", "output dims [7] differ from the classifier's [6]"),
    ("preprocess", 'string_value: "0.229,0.224,0.225"', 'string_value: "0,0,0"', "std must be positive"),
    ("preprocess", "dims: [ 14219 ]", "dims: [ 14000 ]", "has 14219 bytes but dims [14000] declare 14000"),
], ids=["ensemble-batch", "bad-map-key", "output-not-produced", "steps-not-linked", "ensemble-dims", "zero-std", "warmup-size"])
def test_bundle_mistakes_are_caught_before_triton(repo_copy, model, old, new, message):
    edit(repo_copy / model / "config.pbtxt", old, new)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_bundle(repo_copy)
