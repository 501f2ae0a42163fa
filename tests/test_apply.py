"""`python -m scripts apply` against a real tritonserver in explicit model control mode, with a steady
gRPC and HTTP load running through every apply: no request may fail, whatever the outcome."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from client.defaults import ADMIN_KEY_ENV
from client.images import prepare
from loadtest.loop import LoopResult, closed_loop
from scripts.apply import model_digests
from scripts.build import Builder
from scripts.config import load_bundle, read_config, write_config
from scripts.constants import CONFIG_FILENAME, CPU, LOCAL, ORT_THREADS
from scripts.demo import heldout_images
from scripts.layout import PROJECT, Layout
from scripts.serve import local_server
from scripts.validate import diff_live

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base(built, tmp_path_factory):
    """A project of its own (committed configs copied), built once with the demo's ONNX model as a user
    model, so that edits rebuild in seconds instead of retraining."""
    root = tmp_path_factory.mktemp("apply-base")
    shutil.copy2(built.onnx, root / "model.onnx")
    layout = Layout(root / "model_repository", root / "build")
    shutil.copytree(built.repository, layout.repository)
    Builder(layout, model=str(root / "model.onnx"), progress=lambda m: None).run()
    return layout


def copy_project(base: Layout, target: Path) -> Layout:
    """A fresh copy of the base project (stamps and all, so nothing rebuilds)."""
    layout = Layout(target / "model_repository", target / "build")
    shutil.copytree(base.repository, layout.repository)
    shutil.copytree(base.build_dir, layout.build_dir, symlinks=True)
    return layout


@pytest.fixture
def project(base, tmp_path):
    """A copy of the base project and its local-flavor server, in explicit mode."""
    layout = copy_project(base, tmp_path)
    with local_server(layout, log_path=tmp_path / "server.log", model_control="explicit") as server:
        yield layout, server


@pytest.fixture
def cpu_project(base, triton_backends, tmp_path):
    """A copy of the base project and its cpu-flavor server (Triton's DALI and ONNX Runtime backends), explicit mode."""
    layout = copy_project(base, tmp_path)
    layout.backends.mkdir(parents=True, exist_ok=True)
    for backend in ("dali", "onnxruntime"):
        (layout.backends / backend).symlink_to(triton_backends.backends / backend, target_is_directory=True)
    with local_server(layout, layout.flavor(CPU), log_path=tmp_path / "server.log", model_control="explicit") as server:
        yield layout, server


def edit(layout: Layout, model: str, change) -> None:
    """Ops' edit of a committed config (through the protobuf, for brevity)."""
    path = layout.repository / model / CONFIG_FILENAME
    config = read_config(path)
    change(config)
    write_config(config, path)


@dataclasses.dataclass
class UnderLoad:
    """An apply, and the requests sent back to back over gRPC and HTTP from before it started until after it ended."""

    done: subprocess.CompletedProcess
    loops: dict[str, LoopResult]
    started: float
    ended: float

    def assert_no_request_failed(self) -> None:
        for protocol, result in self.loops.items():
            assert result.failures == 0, f"{protocol}: {result.failures} requests failed, e.g. {result.first_failure}"
            # The load really ran through the apply, and after it: answers came back in both windows.
            assert result.answered_between(self.started, self.ended) > 0, f"{protocol}: nothing answered during the apply"
            assert result.answered_between(self.ended, float("inf")) > 0, f"{protocol}: nothing answered after the apply"


def apply_under_load(layout: Layout, server, *extra: str, flavor: str = LOCAL) -> UnderLoad:
    """Run `python -m scripts apply` while gRPC and HTTP clients send requests back to back, from before
    it starts until after it ends."""
    bundle = load_bundle(layout.flavor(flavor))  # what is live (ops' edit may not even parse)
    images = [prepare(path) for _, path in heldout_images(layout.heldout)[:32]]
    names = bundle.ensemble_tensors
    stop, results = threading.Event(), {}

    def loop(protocol: str) -> None:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        results[protocol] = closed_loop(protocol, url, bundle.ensemble.name, names, images, 2, 600.0, stop=stop)

    threads = [threading.Thread(target=loop, args=(protocol,)) for protocol in ("grpc", "http")]
    for thread in threads:
        thread.start()
    try:
        stop.wait(1.0)  # the load is running before apply starts
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "scripts", "apply", "--repository", str(layout.repository),
                               "--build-dir", str(layout.build_dir), "--url", server.http_url, "--flavor", flavor,
                               "--json", *extra],
                              capture_output=True, text=True, cwd=PROJECT, timeout=300,
                              env={**os.environ, ADMIN_KEY_ENV: server.admin_key})
        ended = time.monotonic()
        stop.wait(1.0)  # ... and after it ends
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return UnderLoad(done, results, started, ended)


def live_config(server, model: str) -> dict:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        return client.get_model_config(model, headers=server.admin_headers)
    finally:
        client.close()


def outcome(done: subprocess.CompletedProcess) -> dict:
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def test_a_batching_change_goes_live_with_no_failed_request(project):
    layout, server = project
    edit(layout, "preprocess", lambda c: setattr(c.dynamic_batching, "max_queue_delay_microseconds", 400))
    run = apply_under_load(layout, server)
    assert run.done.returncode == 0, run.done.stderr
    record = outcome(run.done)
    assert (record["result"], record["changed"]) == ("applied", ["preprocess"])
    assert "apply: changed=preprocess result=applied seconds=" in run.done.stderr
    assert live_config(server, "preprocess")["dynamic_batching"]["max_queue_delay_microseconds"] == 400
    assert diff_live(layout.flavor(LOCAL), server.http_url, server.admin_headers) == []
    run.assert_no_request_failed()


def test_a_preprocessing_change_is_rebuilt_and_goes_live_with_no_failed_request(project):
    layout, server = project
    pipeline = layout.flavor(LOCAL) / "preprocess" / "1" / "model.dali"
    before = pipeline.read_bytes()
    edit(layout, "preprocess", lambda c: c.parameters["resize_shorter"].__setattr__("string_value", "80"))
    run = apply_under_load(layout, server)
    assert run.done.returncode == 0, run.done.stderr
    assert "dali: built" in run.done.stderr, "the edit re-serializes the DALI pipeline"
    assert outcome(run.done)["changed"] == ["preprocess"], "the classifier and the ensemble stay as they were"
    assert pipeline.read_bytes() != before
    assert live_config(server, "preprocess")["parameters"]["resize_shorter"]["string_value"] == "80"
    run.assert_no_request_failed()


def test_a_change_that_fails_to_load_is_rolled_back_with_no_failed_request(project):
    layout, server = project
    previous = model_digests(layout.flavor(LOCAL))
    served_threads = live_config(server, "classifier")["parameters"][ORT_THREADS]["string_value"]
    # A typo Triton only finds when the model loads: the thread count is not a number.
    edit(layout, "classifier", lambda c: c.parameters[ORT_THREADS].__setattr__("string_value", "1O"))
    run = apply_under_load(layout, server)
    assert run.done.returncode == 3, run.done.stderr
    record = outcome(run.done)
    assert record["result"] == "rolled-back" and "classifier failed to load" in record["reason"]
    assert live_config(server, "classifier")["parameters"][ORT_THREADS]["string_value"] == served_threads
    assert model_digests(layout.flavor(LOCAL)) == previous, "the previous files are back in place"
    assert diff_live(layout.flavor(LOCAL), server.http_url, server.admin_headers) == []
    run.assert_no_request_failed()
    audit = [json.loads(line) for line in (layout.build_dir / "apply" / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["result"] == "rolled-back" and audit[-1]["changed"] == ["classifier"]
    assert audit[-1]["diff"][0]["field"] == f"parameters[{ORT_THREADS}]"
    assert server.admin_key not in (layout.build_dir / "apply" / "audit.jsonl").read_text() + run.done.stdout + run.done.stderr


def test_an_edit_that_changes_answers_is_rolled_back_unless_expected(project):
    layout, server = project
    # Resized this far, the center crop holds a fraction of each shape: the model sees something else.
    edit(layout, "preprocess", lambda c: c.parameters["resize_shorter"].__setattr__("string_value", "300"))
    run = apply_under_load(layout, server)
    assert run.done.returncode == 3, run.done.stderr
    assert "smoke images changed their top-1" in outcome(run.done)["reason"]
    assert live_config(server, "preprocess")["parameters"]["resize_shorter"]["string_value"] == "73"
    run.assert_no_request_failed()
    run = apply_under_load(layout, server, "--expect-change")
    assert run.done.returncode == 0 and outcome(run.done)["result"] == "applied", run.done.stderr
    assert live_config(server, "preprocess")["parameters"]["resize_shorter"]["string_value"] == "300"
    run.assert_no_request_failed()


def test_two_changed_models_go_live_together_through_the_ensemble(project):
    layout, server = project
    for model in ("preprocess", "classifier"):
        edit(layout, model, lambda c: setattr(c.dynamic_batching, "max_queue_delay_microseconds", 300))
    run = apply_under_load(layout, server)
    assert run.done.returncode == 0, run.done.stderr
    assert outcome(run.done)["changed"] == ["classifier", "preprocess"]
    assert "[4/6] load: image_classifier loaded" in run.done.stderr, "more than one changed: the ensemble loads them"
    for model in ("preprocess", "classifier"):
        assert live_config(server, model)["dynamic_batching"]["max_queue_delay_microseconds"] == 300
    run.assert_no_request_failed()


def test_two_changed_models_whose_load_fails_are_rolled_back_together(project):
    layout, server = project
    previous = model_digests(layout.flavor(LOCAL))
    edit(layout, "preprocess", lambda c: setattr(c.dynamic_batching, "max_queue_delay_microseconds", 300))
    edit(layout, "classifier", lambda c: c.parameters[ORT_THREADS].__setattr__("string_value", "1O"))
    run = apply_under_load(layout, server)
    assert run.done.returncode == 3, run.done.stderr
    assert "[6/6] roll back: the previous configs are live again" in run.done.stderr
    assert live_config(server, "preprocess")["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert model_digests(layout.flavor(LOCAL)) == previous
    assert diff_live(layout.flavor(LOCAL), server.http_url, server.admin_headers) == []
    run.assert_no_request_failed()


def test_the_cpu_flavor_on_the_real_backends_takes_a_change_with_no_failed_request(cpu_project):
    layout, server = cpu_project
    edit(layout, "classifier", lambda c: setattr(c.dynamic_batching, "max_queue_delay_microseconds", 300))
    run = apply_under_load(layout, server, flavor=CPU)
    assert run.done.returncode == 0, run.done.stderr
    assert outcome(run.done)["changed"] == ["classifier"]
    assert live_config(server, "classifier")["dynamic_batching"]["max_queue_delay_microseconds"] == 300
    run.assert_no_request_failed()


def test_an_invalid_edit_is_refused_and_nothing_changes(project):
    layout, server = project
    previous = model_digests(layout.flavor(LOCAL))
    edit(layout, "preprocess", lambda c: c.parameters["std"].__setattr__("string_value", "0.2,0,0.2"))
    run = apply_under_load(layout, server)
    assert run.done.returncode == 1, run.done.stderr
    assert "parameters[std]" in outcome(run.done)["reason"]
    assert model_digests(layout.flavor(LOCAL)) == previous
    assert diff_live(layout.flavor(LOCAL), server.http_url, server.admin_headers) == []
    run.assert_no_request_failed()


def test_unreachable_server_wrong_key_and_a_server_that_does_not_load_on_request(base, tmp_path):
    layout = Layout(base.repository, tmp_path / "build")
    shutil.copytree(base.build_dir, layout.build_dir, symlinks=True)
    command = [sys.executable, "-m", "scripts", "apply", "--repository", str(layout.repository),
               "--build-dir", str(layout.build_dir)]
    down = subprocess.run([*command, "--url", "127.0.0.1:1", "--admin-key", "x"], capture_output=True, text=True,
                          cwd=PROJECT, timeout=60)
    assert down.returncode == 2 and "result=unreachable" in down.stdout, down.stdout + down.stderr
    with local_server(layout, log_path=tmp_path / "none.log") as server:  # model control mode none
        wrong = subprocess.run([*command, "--url", server.http_url, "--admin-key", "wrong"], capture_output=True,
                               text=True, cwd=PROJECT, timeout=60)
        assert wrong.returncode == 2 and "refused the admin key" in wrong.stdout, wrong.stdout
        none = subprocess.run([*command, "--url", server.http_url, "--admin-key", server.admin_key], capture_output=True,
                              text=True, cwd=PROJECT, timeout=60)
        assert none.returncode == 1 and "TRITON_MODEL_CONTROL_MODE=explicit" in none.stdout, none.stdout
    assert server.admin_key not in (layout.build_dir / "apply" / "audit.jsonl").read_text()
    assert Path(layout.build_dir / "apply" / "audit.jsonl").read_text().count("\n") == 3


def test_on_the_gpu_box_apply_stops_when_the_builder_must_run_first(tmp_path):
    """The engine and the nvJPEG pipeline's dali.py are written by the builder container: apply checks that
    they fit the edited configs (dali.py's text, the plan's metadata) before loading anything, and names
    the command when they do not."""
    from scripts import plan_metadata
    from scripts.apply import gpu_artifacts_stale
    from scripts.constants import DALI_SCRIPT, TENSORRT_PLAN
    from scripts.engine import profile_for
    from scripts.repository import gpu_model_files

    repository = tmp_path / "model_repository"
    shutil.copytree(Layout().repository, repository)
    bundle = load_bundle(repository)
    for path, text in gpu_model_files(bundle).items():
        path.write_text(text)
    plan = bundle.artifact(bundle.classifier.model_name, TENSORRT_PLAN)
    plan_metadata.write(plan, plan_metadata.describe(profile_for(bundle.classifier),
                                                     {bundle.classifier.input_name: bundle.classifier.input_dims}))
    assert gpu_artifacts_stale(bundle) == []

    edited = Layout(repository)
    edit(edited, "preprocess", lambda c: c.parameters["resize_shorter"].__setattr__("string_value", "80"))
    assert [reason for reason in gpu_artifacts_stale(load_bundle(repository)) if DALI_SCRIPT in reason]
    edit(edited, "preprocess", lambda c: c.parameters["resize_shorter"].__setattr__("string_value", "73"))
    for model in (bundle.classifier.model_name, bundle.ensemble.name, bundle.preprocess.model_name):
        edit(edited, model, lambda c: setattr(c, "max_batch_size", 16))
    reasons = gpu_artifacts_stale(load_bundle(repository))
    assert any("batch profile" in reason for reason in reasons) and any(DALI_SCRIPT in reason for reason in reasons)
