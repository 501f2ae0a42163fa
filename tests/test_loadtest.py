"""The Locust suite: shapes, the server's view and the SLO gate offline; a bounded headless run against the real server."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from loadtest import report
from loadtest.shapes import users_at
from scripts.layout import PROJECT

METRICS_BEFORE = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="preprocess",version="1"} 10
nv_inference_count{model="preprocess",version="1"} 10
nv_inference_exec_count{model="preprocess",version="1"} 10
nv_inference_queue_duration_us{model="preprocess",version="1"} 1000
nv_inference_compute_infer_duration_us{model="preprocess",version="1"} 5000
"""
METRICS_AFTER = """nv_inference_request_success{model="preprocess",version="1"} 110
nv_inference_request_failure{model="preprocess",version="1"} 2
nv_inference_count{model="preprocess",version="1"} 110
nv_inference_exec_count{model="preprocess",version="1"} 35
nv_inference_queue_duration_us{model="preprocess",version="1"} 201000
nv_inference_compute_infer_duration_us{model="preprocess",version="1"} 305000
nv_inference_request_success{model="idle",version="1"} 4
"""


@pytest.mark.parametrize(("shape", "elapsed", "expected"), [
    ("steady", 0, 8), ("steady", 29, 8), ("steady", 30, None),
    ("step", 0, 2), ("step", 10, 4), ("step", 25, 6), ("step", 29.9, 6),
    ("spike", 0, 2), ("spike", 10, 8), ("spike", 19.9, 8), ("spike", 20, 2),
])
def test_load_shapes(shape, elapsed, expected):
    assert users_at(shape, elapsed, users=8, run_time=30, step_users=2, step_seconds=10, spike_seconds=10) == expected


def test_server_view_is_the_difference_over_the_run():
    view = report.server_view(METRICS_BEFORE, METRICS_AFTER)
    assert set(view) == {"preprocess", "idle"}
    row = view["preprocess"]
    assert (row["requests"], row["failures"]) == (100, 2)
    assert row["mean_batch"] == pytest.approx(100 / 25)
    assert row["queue_ms"] == pytest.approx(2.0) and row["compute_ms"] == pytest.approx(3.0)


@pytest.mark.parametrize(("slo", "measured", "passed", "line"), [
    (report.Slo(p95_ms=50), (40, 90, 0.0, 100), True, "SLO PASS: p95 40.0ms <= 50ms"),
    (report.Slo(p99_ms=50), (40, 90, 0.0, 100), False, "SLO FAIL: p99 90.0ms > 50ms"),
    (report.Slo(error_rate=0.01), (40, 90, 0.02, 100), False, "SLO FAIL: error rate 2.0% > 1%"),
    (report.Slo(p95_ms=50), (0, 0, 0.0, 0), False, "SLO FAIL: p95 0.0ms <= 50ms, no request completed"),
    (report.Slo(), (40, 90, 0.0, 100), True, "SLO: none set (100 requests)"),
])
def test_slo_verdict(slo, measured, passed, line):
    assert slo.verdict(*measured) == (passed, line)


def locust(server, tmp_path, *extra):
    prefix = tmp_path / "run"
    command = [sys.executable, "-m", "locust", "--config", str(PROJECT / "loadtest" / "locust.conf"), "--run-time", "8s",
               "-u", "4", "-r", "4", "--csv", str(prefix), "--html", str(tmp_path / "report.html"),
               "--triton-grpc", server.grpc_url, "--triton-http", server.http_url, "--metrics-url", server.metrics_url, *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, timeout=60), prefix


@pytest.mark.integration
def test_headless_run_over_grpc_and_http_writes_reports_and_the_servers_view(server, bundle, tmp_path):
    done, prefix = locust(server, tmp_path, "--slo-error-rate", "0")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with open(f"{prefix}_stats.csv") as handle:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}
    for protocol in ("grpc", "http"):
        row = rows[(protocol, f"{bundle.ensemble.name} x1")]
        assert int(row["Request Count"]) > 10 and int(row["Failure Count"]) == 0
    assert (tmp_path / "report.html").stat().st_size > 10_000
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert summary["slo"]["passed"] and summary["client"]["failures"] == 0
    served = summary["server"]
    assert set(served) == set(bundle.configs)
    # Every request Locust counted reached the ensemble and both of its steps.
    assert served[bundle.ensemble.name]["requests"] == summary["client"]["requests"]
    assert served[bundle.preprocess.model_name]["requests"] == summary["client"]["requests"]
    assert "server (Triton metrics)" in done.stdout and "SLO PASS: error rate 0.0% <= 0%" in done.stdout


@pytest.mark.integration
def test_the_slo_gate_fails_an_impossible_threshold(server, tmp_path):
    done, _ = locust(server, tmp_path, "--run-time", "4s", "--slo-p95-ms", "0.01", "GrpcUser")
    assert done.returncode == 1
    verdict = [line for line in done.stdout.splitlines() if line.startswith("SLO ")]
    assert len(verdict) == 1 and verdict[0].startswith("SLO FAIL: p95") and "> 0.01ms" in verdict[0]


def test_the_offline_pieces_do_not_import_locust():
    """Importing locust monkey-patches threads and sockets for gevent: it must stay out of other processes."""
    code = "import sys, loadtest.report, loadtest.shapes; sys.exit('locust' in sys.modules or 'gevent.monkey' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PROJECT).returncode == 0
