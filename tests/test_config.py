"""Reading the committed configs with Triton's protobuf schema, and the errors ops get."""

from __future__ import annotations

import shutil

import pytest

from scripts.config import ConfigError, load_bundle, read_config
from tests.conftest import REPOSITORY


@pytest.fixture
def repo_copy(tmp_path):
    target = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, target)
    return target


def test_bundle_is_found_through_the_ensemble(bundle):
    steps = bundle.ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [bundle.preprocess.model_name, bundle.classifier.model_name]
    assert bundle.preprocess.output_name == steps[0].output_map.keys().__iter__().__next__()
    assert (bundle.preprocess.channels, *bundle.preprocess.crop) == bundle.classifier.input_dims
    assert len(bundle.classifier.labels) == bundle.classifier_config.output[0].dims[0]


def test_ensemble_batch_fits_every_step(bundle):
    assert bundle.ensemble.max_batch_size <= bundle.preprocess_config.max_batch_size
    assert bundle.ensemble.max_batch_size <= bundle.classifier_config.max_batch_size


def test_warmup_sample_matches_its_declared_size(bundle):
    for warmup in bundle.preprocess_config.model_warmup:
        for name, data in warmup.inputs.items():
            sample = bundle.model_dir(bundle.preprocess.model_name) / "warmup" / data.input_data_file
            assert list(data.dims) == [sample.stat().st_size]


def test_ensemble_label_file_is_the_classifiers(bundle):
    assert bundle.label_path(bundle.ensemble) == bundle.label_path(bundle.classifier_config)


def test_typo_in_a_field_names_file_and_line(repo_copy):
    path = repo_copy / "classifier" / "config.pbtxt"
    path.write_text(path.read_text().replace("max_batch_size", "max_batch_sise"))
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    message = str(caught.value)
    assert str(path) in message and "max_batch_sise" in message
    assert ":" in message.split("config:")[-1]  # line:column from the protobuf parser


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
