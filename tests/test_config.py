"""Reading the committed configs into the build's specs (Triton's protobuf schema)."""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest

from scripts.config import ConfigError, load_bundle, read_config, read_labels, write_config
from scripts.validate import checked_bundle, validate
from tests.conftest import REPOSITORY


@pytest.fixture
def repo_copy(tmp_path):
    target = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, target)
    return target


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_bundle_is_read_from_the_configs(bundle):
    assert (bundle.preprocess.model_name, bundle.classifier.model_name) == ("preprocess", "classifier")
    assert (bundle.preprocess.input_name, bundle.preprocess.output_name) == ("IMAGE", "PIXELS")
    assert bundle.ensemble_tensors == ("IMAGE", bundle.classifier.output_name), "what a client sends and reads"
    assert (bundle.preprocess.crop, bundle.preprocess.resize_shorter) == ((64, 64), 73)
    assert bundle.preprocess.std == (0.229, 0.224, 0.225)
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


def test_a_syntax_error_names_file_and_line(repo_copy):
    path = repo_copy / "classifier" / "config.pbtxt"
    edit(path, "max_batch_size", "max_batch_sise")
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    assert re.search(rf"{re.escape(str(path))}: not a valid Triton model config: \d+:\d+ : .*max_batch_sise", str(caught.value))


def test_checked_bundle_refuses_a_repository_that_does_not_validate_listing_every_error(repo_copy):
    edit(repo_copy / "image_classifier" / "config.pbtxt", "max_batch_size: 32", "max_batch_size: 64")
    edit(repo_copy / "preprocess" / "config.pbtxt", 'string_value: "0.229,0.224,0.225"', 'string_value: "0,0,0"')
    with pytest.raises(ConfigError) as caught:
        checked_bundle(repo_copy)
    message = str(caught.value)
    assert "4 error(s) in the model repository" in message  # the batch exceeds all three steps
    assert "[ensemble-batch-too-large]" in message and "[parameter-invalid]" in message


@pytest.mark.parametrize(("content", "message"), [
    ("circle\r\nsquare\r\n", "line 1 has a carriage return"),
    ("circle\n\nsquare\n", "line 2 is blank"),
    ("circle\nsquare \n", "line 2 has leading or trailing spaces"),
    ("circle\nsquare\ncircle\n", "line 3 repeats the label 'circle'"),
], ids=["crlf", "blank-line", "trailing-space", "duplicate"])
def test_labels_are_read_as_triton_reads_them(tmp_path, content, message):
    path = tmp_path / "labels.txt"
    path.write_bytes(content.encode())
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_labels(path)


@pytest.mark.parametrize("content", ["circle\nsquare\n", "circle\nsquare"], ids=["final-newline", "no-final-newline"])
def test_labels_with_or_without_a_final_newline(tmp_path, content):
    path = tmp_path / "labels.txt"
    path.write_text(content)
    assert read_labels(path) == ("circle", "square")


def test_a_parameter_that_is_not_a_number_names_the_parameter(repo_copy):
    edit(repo_copy / "preprocess" / "config.pbtxt", 'string_value: "73"', 'string_value: "73px"')
    with pytest.raises(ConfigError, match=r"parameters\[resize_shorter\]: expected a positive whole number, found \"73px\""):
        load_bundle(repo_copy)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("num_threads", "0", "a positive whole number"),
    ("num_threads", "two", "a positive whole number"),
    ("resize_shorter", "-73", "a positive whole number"),
    ("resize_shorter", "32", ">= the crop 64x64"),
    ("mean", "0.5,0.5", "three comma-separated numbers"),
    ("std", "0.2,nan,0.2", "three comma-separated numbers, all > 0"),
    ("std", "0.2,0,0.2", "three comma-separated numbers, all > 0"),
])
def test_one_rule_for_each_preprocessing_parameter(repo_copy, key, value, expected):
    """The validator and the reader apply the same rule to a parameter, and say the same thing about it."""
    path = repo_copy / "preprocess" / "config.pbtxt"
    config = read_config(path)
    config.parameters[key].string_value = value
    write_config(config, path)
    (finding,) = [f for f in validate(repo_copy).errors if f.field == f"parameters[{key}]"]
    assert finding.expected == expected and finding.found == f'"{value}"'
    with pytest.raises(ConfigError) as caught:
        load_bundle(repo_copy)
    assert f'parameters[{key}]: expected {expected}, found "{value}"' in str(caught.value)


def test_a_missing_required_parameter_is_named_by_both(repo_copy):
    path = repo_copy / "preprocess" / "config.pbtxt"
    config = read_config(path)
    del config.parameters["resize_shorter"]
    write_config(config, path)
    (finding,) = validate(repo_copy).errors
    assert (finding.field, finding.found) == ("parameters[resize_shorter]", "nothing (the parameter is missing)")
    with pytest.raises(ConfigError, match=r"parameters\[resize_shorter\]: expected a positive whole number, found nothing"):
        load_bundle(repo_copy)


def test_num_threads_defaults_to_one_and_reaches_the_serialized_pipeline(repo_copy):
    """The local flavor runs the pipeline as serialized: the parsed value is the one that runs."""
    from scripts import preprocess
    from scripts.dali_runner import synchronous_pipeline

    path = repo_copy / "preprocess" / "config.pbtxt"
    config = read_config(path)
    del config.parameters["num_threads"]
    write_config(config, path)
    spec = load_bundle(repo_copy).preprocess
    assert spec.num_threads == 1
    pipeline = synchronous_pipeline(preprocess.serialize_cpu_pipeline(dataclasses.replace(spec, num_threads=3)))
    assert (pipeline.num_threads, pipeline.max_batch_size) == (3, spec.max_batch_size)


def test_the_clients_default_model_is_the_committed_ensemble(bundle):
    """The client stands alone, so it keeps its own default: it must name the ensemble ops serve."""
    from client.defaults import DEFAULT_MODEL

    assert DEFAULT_MODEL == bundle.ensemble.name


def test_the_validator_reports_what_the_reader_refuses(repo_copy):
    """validate() clean means the build can read the repository: no rule lives only in the reader."""
    path = repo_copy / "preprocess" / "config.pbtxt"
    config = read_config(path)
    for key in ("resize_shorter", "mean", "std"):
        del config.parameters[key]
    write_config(config, path)
    fields = {f.field for f in validate(repo_copy).errors if f.model == "preprocess"}
    assert fields == {"parameters[resize_shorter]", "parameters[mean]", "parameters[std]"}
    with pytest.raises(ConfigError):
        load_bundle(repo_copy)


def test_a_repository_the_build_cannot_serve_is_a_finding(repo_copy):
    shutil.copytree(repo_copy / "image_classifier", repo_copy / "image_classifier_2")
    edit(repo_copy / "image_classifier_2" / "config.pbtxt", 'name: "image_classifier"', 'name: "image_classifier_2"')
    (finding,) = validate(repo_copy).errors
    assert finding.code == "bundle-shape" and "expected exactly one ensemble model, found 2" in finding.found
    assert validate(repo_copy, bundle_rules=False).ok()
