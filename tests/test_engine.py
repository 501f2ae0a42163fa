"""Engine build logic that needs no GPU, and the GPU tests (run on the GPU box: `make test-gpu`)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from scripts import engine, plan_metadata
from scripts.config import load_bundle
from scripts.constants import PRECISIONS, TENSORRT_PLAN
from scripts.validate import validate
from tests.conftest import REPOSITORY


def target(spec, **changes):
    base = engine.Target(onnx_sha256="abc", input_name=spec.input_name, input_dims=tuple(spec.input_dims),
                         output_name=spec.output_name, profile=engine.profile_for(spec), precision="fp16",
                         tensorrt_version="10.13.3", gpu_name="NVIDIA L4", compute_capability="8.9")
    return dataclasses.replace(base, **changes)


def test_profile_spans_one_to_max_batch_with_the_largest_preferred_as_opt(bundle):
    spec = dataclasses.replace(bundle.classifier, max_batch_size=32, preferred_batch_sizes=(4, 16))
    assert engine.profile_for(spec) == engine.Profile(min=1, opt=16, max=32)


def test_profile_opt_defaults_to_max_batch(bundle):
    spec = dataclasses.replace(bundle.classifier, max_batch_size=8, preferred_batch_sizes=())
    assert engine.profile_for(spec) == engine.Profile(min=1, opt=8, max=8)


def test_profile_ignores_preferred_sizes_above_max(bundle):
    spec = dataclasses.replace(bundle.classifier, max_batch_size=8, preferred_batch_sizes=(4, 64))
    assert engine.profile_for(spec).opt == 4


def test_profile_refuses_an_unbatched_model(bundle):
    with pytest.raises(engine.EngineError, match="max_batch_size must be >= 1"):
        engine.profile_for(dataclasses.replace(bundle.classifier, max_batch_size=0))


def test_up_to_date_when_nothing_changed(bundle):
    wanted = target(bundle.classifier)
    assert engine.stale_reasons(wanted.as_metadata(built_at="yesterday"), wanted) == []


@pytest.mark.parametrize(("change", "reason"), [
    ({"onnx_sha256": "def"}, "the ONNX model changed"),
    ({"profile": engine.Profile(1, 32, 64)}, "the batch profile changed"),
    ({"precision": "fp32"}, "the precision changed"),
    ({"tensorrt_version": "10.14.1"}, "the TensorRT version changed"),
    ({"gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}, "the GPU changed"),
    ({"input_dims": (3, 224, 224)}, "the input dims changed"),
])
def test_rebuild_when_an_input_changed(bundle, change, reason):
    recorded = target(bundle.classifier).as_metadata()
    reasons = engine.stale_reasons(recorded, target(bundle.classifier, **change))
    assert any(r.startswith(reason) for r in reasons), reasons


def test_rebuild_without_metadata(bundle):
    reasons = engine.stale_reasons(None, target(bundle.classifier))
    assert reasons == ["no engine metadata (first build, or the plan was built elsewhere)"]


def test_metadata_round_trip_is_what_the_validator_reads(bundle, tmp_path):
    repo = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repo)
    plan = load_bundle(repo).artifact(bundle.classifier.model_name, TENSORRT_PLAN)
    plan.write_bytes(b"engine bytes")
    metadata = target(bundle.classifier).as_metadata(built_at="now")
    plan_metadata.write(plan, metadata)
    assert plan_metadata.read(plan) == json.loads(json.dumps(metadata))
    assert not [f for f in validate(repo).findings if f.model == bundle.classifier.model_name and f.severity != "note"]

    small = target(bundle.classifier, profile=engine.Profile(1, 8, 16)).as_metadata()
    plan_metadata.write(plan, small)
    codes = {f.code for f in validate(repo).errors}
    assert "plan-profile-too-small" in codes


def test_accuracy_gate(bundle):
    rng = np.random.default_rng(0)
    reference = rng.dirichlet(np.ones(6), size=200).astype(np.float32)
    close = reference + rng.normal(0, 1e-3, reference.shape).astype(np.float32)
    assert engine.accuracy_gate(reference, close, "fp16").passed
    flipped = reference.copy()
    flipped[:10] = flipped[:10, ::-1]  # 5% of the images change their top-1 class
    report = engine.accuracy_gate(reference, flipped, "fp16")
    assert not report.passed and report.top1_agreement == pytest.approx(0.95, abs=0.01)
    assert "FAILED" in str(report)
    with pytest.raises(engine.EngineError, match="shape"):
        engine.accuracy_gate(reference, reference[:5], "fp16")


def test_the_gate_compares_logits_as_probabilities():
    logits = np.random.default_rng(1).normal(0, 3, (300, 6)).astype(np.float32)
    shifted = logits + 0.3  # 0.3 apart as numbers, the same probabilities
    report = engine.accuracy_gate(logits, shifted, "fp16")
    assert report.max_abs_diff < 1e-6 and report.passed, report


def test_timing_caches_are_kept_per_tensorrt_and_gpu(tmp_path):
    assert engine.timing_cache_path(tmp_path, "10.13.3", "8.9") == tmp_path / "timing-trt10.13.3-sm89.cache"
    assert engine.timing_cache_path(tmp_path, "10.13.3", "8.0") != engine.timing_cache_path(tmp_path, "10.13.3", "8.9")


def test_trtexec_command_matches_the_profile(bundle, tmp_path):
    spec = dataclasses.replace(bundle.classifier, max_batch_size=32, preferred_batch_sizes=(16,))
    command = engine.trtexec_command(tmp_path / "m.fp16.onnx", tmp_path / "m.plan", spec, tmp_path / "t.cache")
    assert f"--minShapes={spec.input_name}:1x3x64x64" in command
    assert f"--optShapes={spec.input_name}:16x3x64x64" in command
    assert f"--maxShapes={spec.input_name}:32x3x64x64" in command
    # TensorRT 11's trtexec has no --fp16: the precision is the model's own types.
    assert "--stronglyTyped" in command and "--fp16" not in command
    assert f"--onnx={tmp_path / 'm.fp16.onnx'}" in command and f"--timingCacheFile={tmp_path / 't.cache'}" in command


def test_the_fp16_model_keeps_fp32_tensors_and_passes_the_gate_in_onnx_runtime(built, bundle, tmp_path):
    """What TensorRT builds for fp16, run by ONNX Runtime on the CPU on every held-out image: FP16 weights,
    the config's FP32 inputs and outputs, and scores the fp16 accuracy gate accepts."""
    import onnx
    import onnxruntime as ort

    from scripts.build import ALL_HELDOUT, Builder

    spec = bundle.classifier
    typed = engine.typed_onnx_path(built.onnx, "fp16", tmp_path)
    assert engine.typed_onnx_path(built.onnx, "fp32", tmp_path) == built.onnx
    engine.write_fp16_copy(built.onnx, typed)
    model = onnx.load(str(typed))
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [(t.name, t.type.tensor_type.elem_type) for t in model.graph.input] == [(spec.input_name, fp32)]
    assert [(t.name, t.type.tensor_type.elem_type) for t in model.graph.output] == [(spec.output_name, fp32)]
    weights = [w for w in model.graph.initializer if w.data_type in (fp32, fp16)]
    assert weights and all(w.data_type == fp16 for w in weights)

    images = Builder(built).verification_inputs(rendered=ALL_HELDOUT)
    scores = {path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
              .run([spec.output_name], {spec.input_name: images})[0] for path in (built.onnx, typed)}
    gate = engine.accuracy_gate(scores[built.onnx], scores[typed], "fp16")
    assert gate.samples >= 300 and gate.passed, gate
    assert gate.max_abs_diff > 0  # it did compute in FP16


def test_the_network_is_strongly_typed_on_tensorrt_10_and_11():
    """TensorRT 10 takes the STRONGLY_TYPED creation flag; 11 keeps it and ignores it; a release without it
    builds with no flag (strong typing being its only mode)."""
    import types

    with_flag = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1))
    without = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace())
    assert engine.strongly_typed_flags(with_flag) == 1 << 1
    assert engine.strongly_typed_flags(without) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_gpu_engine_builds_passes_its_gate_and_is_skipped_when_fresh(built, bundle, tmp_path, precision):
    from scripts.build import ALL_HELDOUT, Builder

    images = Builder(built).verification_inputs(rendered=ALL_HELDOUT)
    plan = tmp_path / "model.plan"
    metadata = engine.build(built.onnx, plan, bundle.classifier, precision, tmp_path, images)
    assert metadata["accuracy_gate"]["passed"] and metadata["profile"]["max"] == bundle.classifier.max_batch_size
    (cache,) = tmp_path.glob("timing-trt*.cache")
    assert cache.stat().st_size > 0
    before = plan.stat().st_mtime_ns
    engine.build(built.onnx, plan, bundle.classifier, precision, tmp_path, images)
    assert plan.stat().st_mtime_ns == before
