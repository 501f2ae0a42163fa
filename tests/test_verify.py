"""`make verify` against a real running server (the local flavor here), with the doctor seeing a GPU box
through the stand-ins of test_doctor; and its engine row from real plan metadata."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nvidia.dali
import pytest
import tritonclient.grpc as grpcclient

from client.defaults import admin_header
from scripts import plan_metadata, verify
from scripts.config import load_bundle
from scripts.constants import GPU, LOCAL, TENSORRT_PLAN
from scripts.demo import MIN_DEMO_ACCURACY
from scripts.engine import profile_for
from scripts.layout import COMPOSE_FILE, PROJECT
from scripts.serve import free_ports
from tests.conftest import REPOSITORY
from tests.test_deployment import rendered
from tests.test_doctor import Host


def run_verify(built, url: str, host: Host, *args: str) -> tuple[int, list[dict]]:
    done = subprocess.run([sys.executable, "-m", "scripts", "verify", "--flavor", LOCAL, "--url", url, "--repository",
                           str(built.repository), "--build-dir", str(built.build_dir), "--env-file", str(host.env_file),
                           "--admin-key-file", str(host.key_file), "--json", *args],
                          capture_output=True, text=True, cwd=PROJECT, env=host.process_environment(), timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def successes(server, model: str) -> int:
    """Requests the model answered, from the statistics API (an admin API)."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(model, headers={admin_header("grpc"): server.admin_key},
                                                as_json=True)["model_stats"][0]["inference_stats"]
        return int(stats["success"].get("count", 0))  # JSON leaves a zero out


def test_verify_prints_one_table_of_a_healthy_deployment(built, server, tmp_path):
    """Every row from the live server: its Triton and DALI, held-out accuracy, load at c=1 and c=16; the
    doctor sees the server's own ports taken by a Triton that answers, which is how it should be."""
    model = load_bundle(built.flavor(LOCAL)).ensemble.name
    endpoint = server.endpoint
    host = Host(tmp_path, TRITON_HTTP_PORT=str(endpoint.http), TRITON_GRPC_PORT=str(endpoint.grpc),
                TRITON_METRICS_PORT=str(endpoint.metrics))
    before = successes(server, model)
    code, rows = run_verify(built, server.grpc_url, host, "--seconds", "2")
    by_item = {row["item"]: row for row in rows}
    assert list(by_item) == ["doctor", "engine", "server", "dali", "accuracy", "load c=1", "load c=16"]
    assert code == 0 and by_item["doctor"]["status"] in ("ok", "warn"), rows
    assert "port" not in by_item["doctor"]["value"]
    assert by_item["engine"]["status"] == "skip"
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        version = client.get_server_metadata(as_json=True)["version"]
    assert by_item["server"] == {"item": "server", "status": "ok", "value": f"Triton {version} at {server.grpc_url}, ready"}
    assert by_item["dali"]["status"] == "ok" and f"DALI {nvidia.dali.__version__}" in by_item["dali"]["value"]
    accuracy = by_item["accuracy"]
    assert accuracy["status"] == "ok" and f"(at least {MIN_DEMO_ACCURACY})" in accuracy["value"]
    assert float(accuracy["value"].split()[1]) >= MIN_DEMO_ACCURACY
    for row in (by_item["load c=1"], by_item["load c=16"]):
        assert row["status"] == "ok" and float(row["value"].split()[0]) > 0 and "failed" not in row["value"], row
    held_out = int(accuracy["value"].split(" on ")[1].split()[0])
    assert successes(server, model) - before > held_out  # the load rows did send their requests

    _, checks = host.doctor()
    ports = [check for name, found in checks.items() if name.startswith("port-") for check in found]
    assert len(ports) == 3 and all(p["status"] == "ok" and "a Triton server answers" in p["detail"] for p in ports)


def test_verify_says_so_when_no_server_answers(built, tmp_path):
    (port,) = free_ports(1)
    code, rows = run_verify(built, f"127.0.0.1:{port}", Host(tmp_path), "--no-doctor")
    assert code == 1
    assert [(row["item"], row["status"]) for row in rows] == [("engine", "skip"), ("server", "fail")]
    assert f"no answer at 127.0.0.1:{port}" in rows[-1]["value"]


def test_the_engine_row_reports_the_plan_metadata_the_builder_wrote(tmp_path):
    repository = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repository)
    bundle = load_bundle(repository)
    row = verify.engine_row(bundle, GPU)
    assert row.status == "fail" and "has the compose builder run?" in row.value
    plan = bundle.artifact(bundle.classifier.model_name, TENSORRT_PLAN)
    metadata = {**plan_metadata.describe(profile_for(bundle.classifier),
                                         {bundle.classifier.input_name: bundle.classifier.input_dims}),
                "tensorrt_version": "11.4.0", "gpu_name": "NVIDIA L4", "compute_capability": "8.9", "precision": "fp16",
                "built_at": "2026-11-30T05:00:00+00:00",
                "accuracy_gate": {"precision": "fp16", "samples": 301, "top1_agreement": 1.0, "max_abs_diff": 3.2e-4,
                                  "passed": True}}
    plan_metadata.write(plan, metadata)
    row = verify.engine_row(load_bundle(repository), GPU)
    assert row.status == "ok", row
    for fact in ("TensorRT 11.4.0", "NVIDIA L4 (compute capability 8.9)", "fp16", "gate passed", "1.0000", "3.20e-04",
                 "301 images"):
        assert fact in row.value, (fact, row.value)
    plan_metadata.write(plan, {**metadata, "accuracy_gate": {**metadata["accuracy_gate"], "passed": False}})
    assert verify.engine_row(load_bundle(repository), GPU).status == "fail"


@pytest.mark.parametrize("flavor", [GPU, LOCAL])
def test_the_dali_row_asks_the_server_s_own_environment(flavor):
    command = verify.dali_version_command(flavor)
    if flavor == GPU:
        assert command[:7] == ["docker", "compose", "-f", str(COMPOSE_FILE), "exec", "-T", verify.COMPOSE_SERVER_SERVICE]
        assert verify.COMPOSE_SERVER_SERVICE in rendered("gpu")["services"]
    else:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == nvidia.dali.__version__
