"""The config validator: a corpus of ops mistakes, each caught with the right finding."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from scripts import plan_metadata, preprocess
from scripts.constants import CPU
from scripts.layout import PROJECT
from scripts.validate import ERROR, NOTE, WARNING, validate
from tests.conftest import REPOSITORY


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def committed(tmp_path):
    return copy(REPOSITORY, tmp_path)


# Each mistake: (id, which repository to copy, the edit, expected (severity, code, model, field start)).
def _typo(repo):
    edit(repo / "classifier" / "config.pbtxt", "max_batch_size: 32", "max_batch_sise: 32")


def _name(repo):
    edit(repo / "preprocess" / "config.pbtxt", 'name: "preprocess"', 'name: "preproc"')


def _no_version(repo):
    shutil.rmtree(repo / "image_classifier" / "1")


def _no_labels(repo):
    (repo / "classifier" / "labels.txt").unlink()


def _map_key(repo):
    edit(repo / "image_classifier" / "config.pbtxt", 'input_map { key: "PIXELS"', 'input_map { key: "PIXEL"')


def _not_produced(repo):
    edit(repo / "image_classifier" / "config.pbtxt", 'input_map { key: "PIXELS" value: "pixels" }', 'input_map { key: "PIXELS" value: "pixel" }')


def _dtype(repo):
    edit(repo / "classifier" / "config.pbtxt", "data_type: TYPE_FP32\n    dims: [ 3, 64, 64 ]", "data_type: TYPE_FP16\n    dims: [ 3, 64, 64 ]")


def _dims(repo):
    edit(repo / "classifier" / "config.pbtxt", "dims: [ 3, 64, 64 ]", "dims: [ 3, 96, 96 ]")


def _ensemble_batch(repo):
    edit(repo / "image_classifier" / "config.pbtxt", "max_batch_size: 32", "max_batch_size: 64")


def _label_missing_line(repo):
    path = repo / "classifier" / "labels.txt"
    path.write_text("\n".join(path.read_text().split("\n")[:5]) + "\n")


def _label_crlf(repo):
    path = repo / "classifier" / "labels.txt"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))


def _preferred(repo):
    edit(repo / "classifier" / "config.pbtxt", "dynamic_batching {", "dynamic_batching {\n  preferred_batch_size: [ 16, 64 ]")


def _queue_delay(repo):
    edit(repo / "preprocess" / "config.pbtxt", "max_queue_delay_microseconds: 100", "max_queue_delay_microseconds: 5000000")


def _instance_count(repo):
    edit(repo / "classifier" / "config.pbtxt", "count: 2", "count: -1")


def _gpu_in_cpu_flavor(repo):
    edit(repo / "preprocess" / "config.pbtxt", "kind: KIND_CPU", "kind: KIND_GPU")


def _cpu_tensorrt(repo):
    edit(repo / "classifier" / "config.pbtxt", "kind: KIND_GPU", "kind: KIND_CPU")


def _warmup_file(repo):
    (repo / "preprocess" / "warmup" / "sample.jpg").unlink()


def _warmup_size(repo):
    size = (repo / "preprocess" / "warmup" / "sample.jpg").stat().st_size
    edit(repo / "preprocess" / "config.pbtxt", f"dims: [ {size} ]", f"dims: [ {size - 1} ]")


def _warmup_dtype(repo):
    edit(repo / "classifier" / "config.pbtxt", "data_type: TYPE_FP32\n        dims", "data_type: TYPE_FP16\n        dims")


def _warmup_input(repo):
    edit(repo / "classifier" / "config.pbtxt", 'key: "PIXELS"', 'key: "PIXEL"')


def _warmup_batch(repo):
    edit(repo / "classifier" / "config.pbtxt", "\n    batch_size: 32", "\n    batch_size: 64")


def _output_not_produced(repo):
    edit(repo / "image_classifier" / "config.pbtxt", 'output_map { key: "SCORES" value: "SCORES" }', 'output_map { key: "SCORES" value: "scores" }')


def _step_missing(repo):
    edit(repo / "image_classifier" / "config.pbtxt", 'model_name: "classifier"', 'model_name: "classifer"')


def _input_not_mapped(repo):
    edit(repo / "image_classifier" / "config.pbtxt", '      input_map { key: "PIXELS" value: "pixels" }\n', "")


def _produced_twice(repo):
    edit(repo / "image_classifier" / "config.pbtxt", 'output_map { key: "PIXELS" value: "pixels" }', 'output_map { key: "PIXELS" value: "IMAGE" }')


def _cycle(repo):
    # The preprocessing now consumes the classifier's output: each step waits for the other.
    edit(repo / "image_classifier" / "config.pbtxt", 'input_map { key: "IMAGE" value: "IMAGE" }', 'input_map { key: "IMAGE" value: "SCORES" }')


def _resize(repo):
    edit(repo / "preprocess" / "config.pbtxt", 'string_value: "73"', 'string_value: "32"')


def _std(repo):
    edit(repo / "preprocess" / "config.pbtxt", 'string_value: "0.229,0.224,0.225"', 'string_value: "0.229,0,0.225"')


def _warmup_on_ensemble(repo):
    path = repo / "image_classifier" / "config.pbtxt"
    path.write_text(path.read_text() + 'model_warmup [ { name: "w" batch_size: 1 inputs { key: "IMAGE" value: { data_type: TYPE_UINT8 dims: [ 4 ] zero_data: true } } } ]\n')


def _onnx_names(repo):
    # A model.onnx whose tensors are not those of the config.
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 64, 64])])
    onnx.save(helper.make_model(graph), str(repo / "classifier" / "1" / "model.onnx"))


def _dali_batch(repo):
    from scripts.config import load_bundle

    spec = dataclasses.replace(load_bundle(REPOSITORY).preprocess, max_batch_size=8)
    (repo / "preprocess" / "1" / "model.dali").write_bytes(preprocess.serialize_cpu_pipeline(spec))


def _dali_garbage(repo):
    (repo / "preprocess" / "1" / "model.dali").write_bytes(b"not a pipeline")


def _dali_script_batch(repo):
    from scripts.config import load_bundle

    batch = load_bundle(REPOSITORY).preprocess.max_batch_size
    edit(repo / "preprocess" / "1" / "dali.py", f"batch_size={batch},", f"batch_size={batch // 2},")


def _dali_script_unknown_operator(repo):
    # What a pipeline written for another DALI looks like to this one: an operator it does not have.
    edit(repo / "preprocess" / "1" / "dali_pipeline.py", "fn.resize(", "fn.resize_shorter_side(")


def _plan_profile(repo):
    plan = repo / "classifier" / "1" / "model.plan"
    plan.write_bytes(b"engine")
    plan_metadata.write(plan, plan_metadata.describe(plan_metadata.Profile(1, 8, 16), {"PIXELS": (3, 64, 64)}))


def _plan_no_metadata(repo):
    (repo / "classifier" / "1" / "model.plan").write_bytes(b"engine")


MISTAKES = [
    ("typo-in-field", "gpu", _typo, (ERROR, "parse-error", "classifier", None)),
    ("name-differs-from-folder", "gpu", _name, (ERROR, "name-mismatch", "preprocess", "name")),
    ("missing-version-folder", "gpu", _no_version, (ERROR, "no-version-folder", "image_classifier", None)),
    ("missing-label-file", "gpu", _no_labels, (ERROR, "missing-label-file", "classifier", "output[SCORES].label_filename")),
    ("wrong-tensor-name-in-map", "gpu", _map_key, (ERROR, "map-key-unknown", "image_classifier", "ensemble_scheduling.step[classifier].input_map[PIXEL]")),
    ("consumes-unproduced-tensor", "gpu", _not_produced, (ERROR, "tensor-not-produced", "image_classifier", "ensemble_scheduling.step[classifier].input_map[PIXELS]")),
    ("dtype-mismatch", "gpu", _dtype, (ERROR, "dtype-mismatch", "image_classifier", "ensemble_scheduling.step[classifier].input_map[PIXELS]")),
    ("dims-mismatch", "gpu", _dims, (ERROR, "dims-mismatch", "image_classifier", "ensemble_scheduling.step[classifier].input_map[PIXELS]")),
    ("ensemble-batch-larger-than-step", "gpu", _ensemble_batch, (ERROR, "ensemble-batch-too-large", "image_classifier", "max_batch_size")),
    ("labels-line-missing", "gpu", _label_missing_line, (ERROR, "labels-count-mismatch", "classifier", "output[SCORES].dims")),
    ("labels-crlf", "gpu", _label_crlf, (ERROR, "labels-format", "classifier", "output[SCORES].label_filename")),
    ("preferred-above-max", "gpu", _preferred, (ERROR, "preferred-batch-invalid", "classifier", "dynamic_batching.preferred_batch_size")),
    ("queue-delay-5s", "gpu", _queue_delay, (WARNING, "queue-delay-high", "preprocess", "dynamic_batching.max_queue_delay_microseconds")),
    ("negative-instance-count", "gpu", _instance_count, (ERROR, "instance-count-invalid", "classifier", "instance_group[0].count")),
    ("gpu-kind-in-cpu-flavor", "cpu", _gpu_in_cpu_flavor, (ERROR, "gpu-instance-in-cpu-flavor", "preprocess", "instance_group[0].kind")),
    ("cpu-kind-for-tensorrt", "gpu", _cpu_tensorrt, (ERROR, "cpu-instance-for-tensorrt", "classifier", "instance_group[0].kind")),
    ("warmup-file-missing", "gpu", _warmup_file, (ERROR, "warmup-file-missing", "preprocess", "model_warmup[sample_jpeg].inputs[IMAGE].input_data_file")),
    ("warmup-dims-not-file-size", "gpu", _warmup_size, (ERROR, "warmup-file-size", "preprocess", "model_warmup[sample_jpeg].inputs[IMAGE].dims")),
    ("warmup-dtype", "gpu", _warmup_dtype, (ERROR, "warmup-dtype-mismatch", "classifier", "model_warmup[full_batch].inputs[PIXELS].data_type")),
    ("warmup-unknown-input", "gpu", _warmup_input, (ERROR, "warmup-input-unknown", "classifier", "model_warmup[full_batch].inputs[PIXEL]")),
    ("warmup-batch-above-max", "gpu", _warmup_batch, (ERROR, "warmup-batch-invalid", "classifier", "model_warmup[full_batch].batch_size")),
    ("ensemble-output-not-produced", "gpu", _output_not_produced, (ERROR, "ensemble-output-not-produced", "image_classifier", "output[SCORES]")),
    ("step-model-missing", "gpu", _step_missing, (ERROR, "step-model-missing", "image_classifier", "ensemble_scheduling.step[classifer]")),
    ("step-input-not-mapped", "gpu", _input_not_mapped, (ERROR, "input-not-mapped", "image_classifier", "ensemble_scheduling.step[classifier].input_map")),
    ("tensor-produced-twice", "gpu", _produced_twice, (ERROR, "tensor-produced-twice", "image_classifier", "ensemble_scheduling.step[preprocess].output_map[PIXELS]")),
    ("cycle", "gpu", _cycle, (ERROR, "cycle", "image_classifier", "ensemble_scheduling.step")),
    ("resize-smaller-than-crop", "gpu", _resize, (ERROR, "parameter-invalid", "preprocess", "parameters[resize_shorter]")),
    ("zero-std", "gpu", _std, (ERROR, "parameter-invalid", "preprocess", "parameters[std]")),
    ("warmup-on-ensemble", "gpu", _warmup_on_ensemble, (ERROR, "warmup-on-ensemble", "image_classifier", "model_warmup")),
    ("onnx-tensor-names", "cpu", _onnx_names, (ERROR, "onnx-mismatch", "classifier", "input[PIXELS]")),
    ("dali-batch-differs", "cpu", _dali_batch, (WARNING, "dali-batch-mismatch", "preprocess", "max_batch_size")),
    ("dali-file-damaged", "cpu", _dali_garbage, (ERROR, "dali-unreadable", "preprocess", None)),
    ("dali-file-beside-dali-py", "cpu", _dali_garbage, (WARNING, "dali-script-shadowed", "preprocess", "version 1")),
    ("dali-py-batch-differs", "cpu", _dali_script_batch, (WARNING, "dali-batch-mismatch", "preprocess", "max_batch_size")),
    ("dali-py-fails", "cpu", _dali_script_unknown_operator, (ERROR, "dali-script-fails", "preprocess", None)),
    ("engine-profile-below-max-batch", "gpu", _plan_profile, (ERROR, "plan-profile-too-small", "classifier", "max_batch_size")),
    ("engine-without-metadata", "gpu", _plan_no_metadata, (WARNING, "plan-metadata-missing", "classifier", "version 1")),
]


@pytest.mark.parametrize(("flavor", "mistake", "expected"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_gives_its_finding(built, tmp_path, flavor, mistake, expected):
    source = REPOSITORY if flavor == "gpu" else built.flavor(flavor)
    repo = copy(source, tmp_path)
    mistake(repo)
    report = validate(repo)
    severity, code, model, field = expected
    matches = [f for f in report.findings if f.code == code]
    assert matches, f"no {code} finding; got:\n" + "\n".join(map(str, report.findings))
    finding = matches[0]
    assert (finding.severity, finding.model) == (severity, model), str(finding)
    assert field is None or (finding.field or "").startswith(field), str(finding)
    assert finding.expected and finding.found and finding.hint and Path(finding.file).is_file()
    assert all(f.hint for f in report.findings), "every finding carries a hint"
    assert not report.ok(strict=True)


def test_a_dali_without_a_pipeline_property_leaves_a_note_not_a_crash(built, tmp_path, monkeypatch):
    """The server's DALI may be older than this one: what a Pipeline exposes differs between releases."""
    from nvidia.dali import Pipeline

    repo = copy(built.flavor("cpu"), tmp_path)
    assert not validate(repo).findings
    monkeypatch.delattr(Pipeline, "num_outputs")
    findings = validate(repo).findings
    assert [(f.severity, f.code) for f in findings] == [(NOTE, "dali-not-inspected")], findings
    assert "Pipeline.num_outputs" in findings[0].expected and "AttributeError" in findings[0].found


def test_parse_errors_carry_the_line_number(tmp_path):
    repo = committed(tmp_path)
    _typo(repo)
    (finding,) = validate(repo).errors
    text = (repo / "classifier" / "config.pbtxt").read_text().splitlines()
    assert "max_batch_sise" in text[finding.line - 1]


def test_semantic_findings_point_at_the_line(tmp_path):
    repo = committed(tmp_path)
    _preferred(repo)
    (finding,) = validate(repo).errors
    text = (repo / "classifier" / "config.pbtxt").read_text().splitlines()
    assert "preferred_batch_size" in text[finding.line - 1]


@pytest.mark.parametrize("flavor", ["gpu", "cpu", "local"])
def test_committed_repository_and_generated_flavors_validate_clean(built, flavor):
    repo = REPOSITORY if flavor == "gpu" else built.flavor(flavor)
    report = validate(repo, require_artifacts=flavor != "gpu")
    assert report.flavor == flavor
    assert report.ok(strict=True), "\n".join(map(str, report.findings))
    # The gpu flavor's engine and nvJPEG pipeline are built on the GPU box: named, not failed.
    notes = {(f.model, f.code) for f in report.findings if f.severity == NOTE}
    # The builder of the GPU box writes these: the engine, dali.py, the image check's model.py.
    built_on_the_box = {(name, "missing-artifact") for name in ("classifier", "preprocess", "imagecheck")}
    assert notes == (built_on_the_box if flavor == "gpu" else set())


def test_missing_artifacts_are_errors_when_required(tmp_path):
    report = validate(committed(tmp_path), require_artifacts=True)
    assert {(f.model, f.code) for f in report.errors} == {(name, "missing-artifact") for name in ("classifier", "preprocess", "imagecheck")}
    assert "engine build" in next(f.hint for f in report.errors if f.model == "classifier")


def test_validating_the_committed_repository_is_fast():
    started = time.perf_counter()
    report = validate(REPOSITORY)
    elapsed = time.perf_counter() - started
    print(f"validated {REPOSITORY} in {elapsed:.3f}s ({report.seconds:.3f}s inside)")
    assert report.ok(strict=True)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "scripts", *args], capture_output=True, text=True, cwd=PROJECT, timeout=120)


def test_cli_exit_codes_and_json(tmp_path):
    clean = run_cli("validate", str(REPOSITORY), "--json")
    assert clean.returncode == 0, clean.stdout
    assert json.loads(clean.stdout)["errors"] == 0

    repo = committed(tmp_path)
    _queue_delay(repo)
    assert run_cli("validate", str(repo)).returncode == 0  # a warning alone passes...
    strict = run_cli("validate", str(repo), "--strict")
    assert strict.returncode == 1  # ...unless --strict
    assert "warning [queue-delay-high]" in strict.stdout

    _dims(repo)
    broken = run_cli("validate", str(repo))
    assert broken.returncode == 1
    assert "error [dims-mismatch]" in broken.stdout and "hint:" in broken.stdout
    assert run_cli("validate", str(tmp_path / "nowhere")).returncode == 2


def _version_missing(repo):
    edit(repo / "image_classifier" / "config.pbtxt", 'model_name: "classifier"\n      model_version: -1', 'model_name: "classifier"\n      model_version: 3')


def _config_missing(repo):
    (repo / "resnet" / "1").mkdir(parents=True)


def _no_backend(repo):
    (repo / "classifier" / "config.pbtxt").write_text("")


def _not_utf8(repo):
    path = repo / "classifier" / "config.pbtxt"
    path.write_bytes(path.read_bytes().replace(b"# The image classifier", b"# The image classifier \xff\xfe"))


MORE_MISTAKES = [
    ("step-version-missing", _version_missing, ("step-version-missing", "image_classifier")),
    ("model-folder-without-config", _config_missing, ("config-missing", "resnet")),
    ("empty-config", _no_backend, ("backend-missing", "classifier")),
    ("config-not-utf8", _not_utf8, ("parse-error", "classifier")),
]


@pytest.mark.parametrize(("mistake", "expected"), [m[1:] for m in MORE_MISTAKES], ids=[m[0] for m in MORE_MISTAKES])
def test_more_layout_mistakes(tmp_path, mistake, expected):
    repo = committed(tmp_path)
    mistake(repo)
    codes = {(f.code, f.model) for f in validate(repo).errors}
    assert expected in codes, codes


def write_model(repo: Path, name: str, config: str, artifact: str = "model.py") -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    if artifact:
        (repo / name / "1" / artifact).write_bytes(b"")


def test_valid_but_unusual_configs_stay_clean(tmp_path):
    """Configs Triton accepts must not be flagged: mixed batching, reshape, strings, several instance groups,
    a custom model file name, a non-batching ensemble."""
    repo = tmp_path / "repo"
    write_model(repo, "pre", 'backend: "python"\nmax_batch_size: 8\n'
                'input [{ name: "X" data_type: TYPE_UINT8 dims: [ -1 ] allow_ragged_batch: true }]\n'
                'output [{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }]\n')
    write_model(repo, "post", 'backend: "python"\nmax_batch_size: 0\n'
                'input [{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
                'output [{ name: "Z" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
                'instance_group [{ kind: KIND_CPU count: 2 }, { kind: KIND_CPU count: 1 }]\n')
    write_model(repo, "pipeline", 'platform: "ensemble"\nmax_batch_size: 0\n'
                'input [{ name: "X" data_type: TYPE_UINT8 dims: [ -1 ] }]\n'
                'output [{ name: "Z" data_type: TYPE_FP32 dims: [ 4 ] }]\n'
                'ensemble_scheduling { step [\n'
                '  { model_name: "pre" model_version: 1 input_map { key: "X" value: "X" } output_map { key: "Y" value: "y" } },\n'
                '  { model_name: "post" model_version: -1 input_map { key: "Y" value: "y" } output_map { key: "Z" value: "Z" } } ] }\n',
                artifact="")
    write_model(repo, "strings", 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\ndefault_model_filename: "custom.onnx"\n'
                'input [{ name: "T" data_type: TYPE_STRING dims: [ 1 ] },'
                ' { name: "R" data_type: TYPE_FP32 dims: [ 1, 4 ] reshape: { shape: [ 4 ] } }]\n'
                'output [{ name: "U" data_type: TYPE_STRING dims: [ 1 ] }, { name: "S" data_type: TYPE_FP32 dims: [ 4 ] }]\n',
                artifact="")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["T"], ["U"]), helper.make_node("Identity", ["R"], ["S"])], "g",
        [helper.make_tensor_value_info("T", TensorProto.STRING, ["n", 1]), helper.make_tensor_value_info("R", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("U", TensorProto.STRING, ["n", 1]), helper.make_tensor_value_info("S", TensorProto.FLOAT, ["n", 4])])
    onnx.save(helper.make_model(graph), str(repo / "strings" / "1" / "custom.onnx"))
    report = validate(repo, flavor="cpu", require_artifacts=True, bundle_rules=False)
    assert report.ok(strict=True), "\n".join(map(str, report.findings))
    # The same repository is not one the build could serve: said once, on the model at fault.
    shape = [f for f in validate(repo, flavor="cpu", require_artifacts=True).errors]
    assert {(f.code, f.model) for f in shape} == {("preprocess-output-invalid", "pre"), ("parameter-invalid", "pre")}


def test_only_the_versions_triton_loads_need_artifacts(tmp_path):
    repo = committed(tmp_path)
    (repo / "classifier" / "2").mkdir()  # the latest version: the one that loads
    (repo / "classifier" / "02").mkdir()  # not a version for Triton (leading zero)
    findings = [f for f in validate(repo).findings if f.code == "missing-artifact" and f.model == "classifier"]
    assert [f.field for f in findings] == ["version 2"]


def test_findings_in_a_second_instance_group_point_at_its_line(tmp_path):
    repo = committed(tmp_path)
    edit(repo / "classifier" / "config.pbtxt", "    count: 2\n    kind: KIND_GPU\n  }\n]",
         "    count: 2\n    kind: KIND_GPU\n  },\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]")
    (finding,) = validate(repo).errors
    assert (finding.code, finding.field) == ("cpu-instance-for-tensorrt", "instance_group[1].kind")
    assert "KIND_CPU" in (repo / "classifier" / "config.pbtxt").read_text().splitlines()[finding.line - 1]


def test_an_explicit_flavor_wins_over_the_generated_header(built):
    assert validate(built.flavor(CPU)).flavor == "cpu"
    assert validate(built.flavor(CPU), flavor="gpu").flavor == "gpu"


@pytest.mark.parametrize(("model", "field", "written", "severity", "code", "hint"), [
    ("classifier", "platform", "tensorrt_plna", ERROR, "unknown-platform", 'did you mean "tensorrt_plan"?'),
    ("classifier", "platform", "torchscript", ERROR, "unknown-platform", "Triton loads no model with another platform"),
    ("preprocess", "backend", "dail", ERROR, "backend-misspelled", 'did you mean "dali"?'),
    ("preprocess", "backend", "onnxrutime", ERROR, "backend-misspelled", 'did you mean "onnxruntime"?'),
    ("preprocess", "backend", "my_resizer", WARNING, "unknown-backend", "a custom backend?"),
], ids=["platform-typo", "platform-unknown", "backend-swapped-letters", "backend-missing-letter", "custom-backend"])
def test_near_miss_platform_and_backend_names(tmp_path, model, field, written, severity, code, hint):
    """Triton refuses an unknown platform; a backend a typo away from a known one is a typo; a custom one may be fine."""
    repo = committed(tmp_path)
    path = repo / model / "config.pbtxt"
    text = path.read_text()
    current = 'platform: "tensorrt_plan"' if model == "classifier" else 'backend: "dali"'
    path.write_text(text.replace(current, f'{field}: "{written}"'))
    (finding,) = [f for f in validate(repo).findings if f.code == code]
    assert (finding.severity, finding.field, finding.found) == (severity, field, f'"{written}"')
    assert finding.hint == hint or finding.hint.startswith(hint)
    assert f'{field}: "{written}"' in path.read_text().splitlines()[finding.line - 1]
