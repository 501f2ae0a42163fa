"""Build stages: bring-your-own models, ONNX export checks, flavors, and idempotency."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from scripts import demo, export
from scripts.build import Builder
from scripts.config import ModelConfig, load_bundle, read_config
from scripts.constants import CONFIG_FILENAME, CPU, DALI_PIPELINE, GENERATED_FLAVORS, LOCAL, ONNX_MODEL, ORT_THREADS, PYTHON_MODEL
from scripts.layout import Layout
from scripts.repository import SHARE_THE_CORES, dali_model_files, flavor_config, host_cores
from tests.conftest import REPOSITORY


def tiny_classifier(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes), nn.Softmax(dim=1)).eval()


def export_with_other_names(module, bundle, path):
    """An ONNX file whose tensors are not named as the classifier config says."""
    torch.onnx.export(module, (torch.zeros(1, *bundle.classifier.input_dims),), str(path), dynamo=False,
                      input_names=["images"], output_names=["probs"], dynamic_axes={"images": {0: "n"}, "probs": {0: "n"}})


def run_build(repository_dir, build_dir, model):
    builder = Builder(Layout(repository_dir, build_dir), model=str(model), progress=lambda m: None)
    return {r.name: r for r in builder.run()}, builder


def served_file(layout, model, filename, flavor=LOCAL):
    """A file the build put in a generated flavor's version folder."""
    return load_bundle(layout.flavor(flavor)).artifact(model, filename)


def digest(path):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def user_models(tmp_path_factory, bundle):
    """One small model saved in each accepted format."""
    directory = tmp_path_factory.mktemp("user_models")
    module = tiny_classifier(len(bundle.classifier.labels))
    torch.jit.script(module).save(str(directory / "scripted.pt"))
    torch.save(module, directory / "pickled.pth")
    export.export(module, bundle.classifier, directory / "model.onnx")
    return directory, module


@pytest.mark.parametrize(("filename", "kind"),
                         [("scripted.pt", "torchscript"), ("pickled.pth", "pickle"), ("model.onnx", "onnx")])
def test_bring_your_own_model(user_models, bundle, tmp_path, filename, kind):
    directory, module = user_models
    before = digest(REPOSITORY)
    results, builder = run_build(REPOSITORY, tmp_path / "build", directory / filename)
    assert results["onnx"].report["kind"] == kind
    if kind == "onnx":
        assert results["onnx"].report["max_abs_error"] is None
    else:
        assert results["onnx"].report["max_abs_error"] <= export.TOLERANCE
    # The served ONNX file computes what the user's model computes.
    inputs = builder.verification_inputs()
    session = ort.InferenceSession(str(served_file(builder.layout, bundle.classifier.model_name, ONNX_MODEL)))
    got = session.run(None, {bundle.classifier.input_name: inputs})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(torch.from_numpy(inputs)).numpy(), atol=1e-5)
    assert digest(REPOSITORY) == before, "the build must never write into the committed configs"


def test_onnx_with_other_tensor_names_is_refused(user_models, bundle, tmp_path):
    _, module = user_models
    path = tmp_path / "renamed.onnx"
    export_with_other_names(module, bundle, path)
    with pytest.raises(export.ExportError, match='input is named "images" but the classifier config says "PIXELS"'):
        export.check_signature(path, bundle.classifier)


def test_onnx_with_a_fixed_batch_is_refused(user_models, bundle, tmp_path):
    _, module = user_models
    path = tmp_path / "fixed.onnx"
    fixed_batch_onnx(module, bundle, path)
    with pytest.raises(export.ExportError, match="fixed batch dimension 1"):
        export.check_signature(path, bundle.classifier)


def test_export_has_a_dynamic_batch(built, bundle):
    session = ort.InferenceSession(str(built.onnx))
    for batch in (1, bundle.classifier.max_batch_size):
        x = np.zeros((batch, *bundle.classifier.input_dims), np.float32)
        (scores,) = session.run(None, {bundle.classifier.input_name: x})
        assert scores.shape == (batch, len(bundle.classifier.labels))
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_verification_fails_above_the_tolerance(user_models, bundle, built):
    directory, module = user_models
    other = tiny_classifier(len(bundle.classifier.labels))
    with torch.no_grad():
        other[0].weight.add_(0.5)
    inputs = np.stack([np.zeros(bundle.classifier.input_dims, np.float32), np.ones(bundle.classifier.input_dims, np.float32)])
    with pytest.raises(export.ExportError, match="differs from torch"):
        export.verify(directory / "model.onnx", bundle.classifier, inputs, other)


def test_flavors_change_only_backend_platform_and_instance_kind(built, bundle):
    """... and, in the cpu flavor's DALI step, batching for instances (tests/test_cpu_flavor.py says how), and
    ONNX Runtime's threads left to the host resolved for it (the next test)."""
    expected = {
        "cpu": {"ensemble": ("ensemble", ""), "check": ("", "python"), "preprocess": ("", "dali"),
                "classifier": ("onnxruntime_onnx", "")},
        "local": {"ensemble": ("ensemble", ""), "check": ("", "python"), "preprocess": ("", "python"),
                  "classifier": ("", "python")},
    }
    roles = {bundle.ensemble.name: "ensemble", bundle.check.model_name: "check", bundle.preprocess.model_name: "preprocess",
             bundle.classifier.model_name: "classifier"}
    for flavor in GENERATED_FLAVORS:
        for name, committed in bundle.configs.items():
            generated = read_config(built.flavor(flavor) / name / CONFIG_FILENAME)
            assert (generated.platform, generated.backend) == expected[flavor][roles[name]]
            assert all(group.kind == group.KIND_CPU for group in generated.instance_group)
            if (flavor, name) == (CPU, bundle.preprocess.model_name):
                generated.parameters["num_threads"].CopyFrom(committed.parameters["num_threads"])
                generated.dynamic_batching.CopyFrom(committed.dynamic_batching)
            if name == bundle.classifier.model_name:
                threads = generated.parameters[ORT_THREADS].string_value
                assert threads == str(max(1, host_cores() // generated.instance_group[0].count)), threads
                generated.parameters[ORT_THREADS].CopyFrom(committed.parameters[ORT_THREADS])
            # Everything else is as ops wrote it.
            for field in ("input", "output", "max_batch_size", "dynamic_batching", "model_warmup", "parameters",
                          "ensemble_scheduling"):
                assert getattr(generated, field) == getattr(committed, field), (flavor, name, field)
        flavor_bundle = load_bundle(built.flavor(flavor))
        assert flavor_bundle.classifier.labels == bundle.classifier.labels
        if flavor == LOCAL:  # the python model runs the pipeline serialized here
            assert served_file(built, bundle.preprocess.model_name, DALI_PIPELINE, flavor).is_file()
        else:  # the DALI backend serializes dali.py with the server's DALI
            for filename, text in dali_model_files(bundle, flavor).items():
                assert served_file(built, bundle.preprocess.model_name, filename, flavor).read_text() == text
            assert not served_file(built, bundle.preprocess.model_name, DALI_PIPELINE, flavor).exists()
        assert served_file(built, bundle.classifier.model_name, ONNX_MODEL, flavor).is_file()


@pytest.mark.parametrize("flavor", GENERATED_FLAVORS)
def test_onnx_runtime_threads_left_to_the_host_share_its_cores_among_the_instances(bundle, flavor):
    def threads(committed: str | None, instances: int, cores: int) -> str:
        config = ModelConfig()
        config.CopyFrom(bundle.classifier_config)
        config.instance_group[0].count = instances
        if committed is None:
            del config.parameters[ORT_THREADS]
        else:
            config.parameters[ORT_THREADS].string_value = committed
        name = bundle.classifier.model_name
        derived = flavor_config(bundle.with_config(name, config), name, flavor, cores=cores)
        return derived.parameters[ORT_THREADS].string_value

    assert bundle.classifier_config.parameters[ORT_THREADS].string_value == SHARE_THE_CORES, "the committed default"
    assert [threads("0", 2, cores) for cores in (1, 2, 3, 8, 64)] == ["1", "1", "1", "4", "32"]
    assert threads("0", 3, 8) == "2" and threads("0", 1, 8) == "8"
    assert threads(None, 2, 8) == "4", "no value is ONNX Runtime's per-core default: shared the same way"
    assert threads("3", 2, 8) == "3", "ops' number is kept"
    assert threads("1O", 2, 8) == "1O", "a typo is the server's to refuse, with its message"


def test_build_is_idempotent_and_rebuilds_only_what_changed(user_models, bundle, tmp_path):
    directory, _ = user_models
    repo = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repo)
    build_dir = tmp_path / "build"
    first, _ = run_build(repo, build_dir, directory / "model.onnx")
    assert first["flavors"].status == "built"
    again, _ = run_build(repo, build_dir, directory / "model.onnx")
    assert {name: r.status for name, r in again.items() if name != "model"} == {
        "heldout": "up to date", "onnx": "up to date", "dali": "up to date", "flavors": "up to date", "backends": "skipped"}

    # An ops edit of the preprocessing config reaches the DALI pipeline and the flavors, not the model.
    config_path = repo / bundle.preprocess.model_name / CONFIG_FILENAME
    config_path.write_text(config_path.read_text().replace('key: "num_threads"\n    value: { string_value: "2" }',
                                                           'key: "num_threads"\n    value: { string_value: "1" }'))
    edited, builder = run_build(repo, build_dir, directory / "model.onnx")
    assert {name: r.status for name, r in edited.items() if name != "model"} == {
        "heldout": "up to date", "onnx": "up to date", "dali": "built", "flavors": "built", "backends": "skipped"}
    generated = read_config(builder.layout.flavor(LOCAL) / bundle.preprocess.model_name / CONFIG_FILENAME)
    assert generated.parameters["num_threads"].string_value == "1"


def test_demo_rendering_is_deterministic_and_labelled():
    labels = ("circle", "star")
    first = list(demo.samples(labels, 2, seed=5))
    assert first == list(demo.samples(labels, 2, seed=5))
    assert [index for index, _ in first] == [0, 1, 0, 1]
    assert all(jpeg[:3] == b"\xff\xd8\xff" for _, jpeg in first)


def test_demo_refuses_labels_it_cannot_draw():
    with pytest.raises(ValueError, match=r"can only learn the shapes .* names \['cat'\]"):
        demo.check_labels(("circle", "cat"))


def test_demo_training_is_deterministic(bundle):
    labels = bundle.classifier.labels
    first = demo.train(labels, bundle.preprocess, progress=lambda m: None, epochs=1, per_class=4).state_dict()
    second = demo.train(labels, bundle.preprocess, progress=lambda m: None, epochs=1, per_class=4).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_onnx_tensors_are_named_as_the_config_says_by_the_build(user_models, bundle, tmp_path):
    _, module = user_models
    renamed = tmp_path / "renamed.onnx"
    export_with_other_names(module, bundle, renamed)
    before = renamed.read_bytes()
    _, builder = run_build(REPOSITORY, tmp_path / "build", renamed)
    export.check_signature(builder.layout.onnx, bundle.classifier)
    assert renamed.read_bytes() == before, "the user's file is left as it is"


def fixed_batch_onnx(module, bundle, path):
    torch.onnx.export(module, (torch.zeros(1, *bundle.classifier.input_dims),), str(path), dynamo=False,
                      input_names=[bundle.classifier.input_name], output_names=[bundle.classifier.output_name])


def test_a_rejected_model_never_replaces_the_last_good_one(user_models, bundle, tmp_path):
    directory, module = user_models
    rejected = tmp_path / "fixed.onnx"
    fixed_batch_onnx(module, bundle, rejected)
    build_dir = tmp_path / "build"
    _, builder = run_build(REPOSITORY, build_dir, directory / "model.onnx")
    good = builder.layout.onnx.read_bytes()
    with pytest.raises(export.ExportError):
        run_build(REPOSITORY, build_dir, rejected)
    assert builder.layout.onnx.read_bytes() == good
    # Back to the good model: whatever the stamps say, what is served is the good model.
    results, _ = run_build(REPOSITORY, build_dir, directory / "model.onnx")
    served = served_file(builder.layout, bundle.classifier.model_name, ONNX_MODEL)
    assert served.read_bytes() == good


def test_a_deleted_output_is_rebuilt(user_models, bundle, tmp_path):
    directory, _ = user_models
    _, builder = run_build(REPOSITORY, tmp_path / "build", directory / "model.onnx")
    served_file(builder.layout, bundle.classifier.model_name, PYTHON_MODEL).unlink()
    results, _ = run_build(REPOSITORY, tmp_path / "build", directory / "model.onnx")
    assert results["flavors"].status == "built"
    assert served_file(builder.layout, bundle.classifier.model_name, PYTHON_MODEL).is_file()


def test_heldout_images_follow_the_labels(tmp_path):
    repo = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repo)
    (repo / "classifier" / "labels.txt").write_text("circle\nsquare\ntriangle\nstar\nring\ncross\n")
    builder = Builder(Layout(repo, tmp_path / "build"), progress=lambda m: None)
    stale = builder.layout.heldout / "hexagon"
    stale.mkdir(parents=True)
    builder.run(only=("heldout",))
    assert sorted(p.name for p in builder.layout.heldout.iterdir()) == sorted(builder.labels)
