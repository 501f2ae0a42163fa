"""Monitoring, tested like code: promtool checks the config and the rules and runs their unit tests; a real
Prometheus scrapes a real local tritonserver under traffic with one bad image, and the recording rules
give the numbers the dashboards show; every metric the rules and dashboards use exists in the live
/metrics (the GPU-only ones aside), and the dashboards read only recording rules."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request

import pytest
import yaml

from scripts import monitor
from scripts.config import load_bundle
from scripts.layout import COMPOSE_FILE
from scripts.serve import SUMMARY_METRICS, free_ports, local_server
from tests.conftest import REPOSITORY
from tests.test_isolation import send_together

FAILURES_PER_FAILED_ENSEMBLE_REQUEST = 2.0  # tritonserver 2.51 (README "Monitoring")
RULE_FILES = sorted(monitor.RULES.glob("*.yml"))
DASHBOARD_FILES = sorted(monitor.DASHBOARDS.glob("*.json"))


@pytest.fixture(scope="module")
def promtool_ready():
    """Prometheus's tools installed here; in CI they must be (.ci/run installs Debian's package)."""
    try:
        monitor.binary("promtool")
        monitor.binary("prometheus")
    except monitor.PrometheusMissing as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


def rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_exprs() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARD_FILES:
        for panel in json.loads(path.read_text())["panels"]:
            found += [(f"{path.name}: {panel['title']}", target["expr"]) for target in panel["targets"]]
    return found


def metric_names(expr: str) -> set[str]:
    """The series names an expression reads: identifiers not followed by "(" and not label names."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]|\boffset\s+\w+", "", without_matchers)
    without_grouping = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_ranges)
    names = {m.group() for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", without_grouping)
             if not without_grouping[m.end():].lstrip().startswith("(")}
    keywords = {"and", "or", "unless", "offset", "bool", "sum", "max", "min", "avg", "count", "rate", "avg_over_time"}
    return names - keywords


# -- promtool -------------------------------------------------------------------------------------
def test_promtool_checks_the_config(promtool_ready):
    done = monitor.promtool("check", "config", str(monitor.PROMETHEUS_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(RULE_FILES)} rule files found" in done.stdout


def test_promtool_checks_the_rules(promtool_ready):
    done = monitor.promtool("check", "rules", *map(str, RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_rule_has_a_unit_test_and_the_tests_pass(promtool_ready):
    tests = [yaml.safe_load(path.read_text()) for path in sorted(monitor.RULE_TESTS.glob("*.yml"))]
    tested = {case.get("alertname") for suite in tests for test in suite["tests"] for case in test.get("alert_rule_test", [])}
    tested |= {name for suite in tests for test in suite["tests"] for case in test.get("promql_expr_test", [])
               for name in metric_names(case["expr"])}
    untested = {rule.get("alert") or rule.get("record") for rule in rules()} - tested
    assert not untested, f"rules without a unit test: {sorted(untested)}"
    cases = [case for suite in tests for test in suite["tests"] for case in test.get("alert_rule_test", [])]
    for alert in (rule["alert"] for rule in rules() if "alert" in rule):
        expected = [bool(case["exp_alerts"]) for case in cases if case["alertname"] == alert]
        assert True in expected and False in expected, f"{alert} must be shown firing and shown quiet"
    done = monitor.promtool("test", "rules", *[str(p.relative_to(monitor.MONITORING)) for p in monitor.RULE_TESTS.glob("*.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# -- what the rules and dashboards read -----------------------------------------------------------
def test_dashboards_read_recording_rules_only():
    allowed = recorded_names() | {"up"}
    for where, expr in dashboard_exprs():
        assert metric_names(expr) <= allowed, f"{where}: {expr} reads {metric_names(expr) - allowed}, not a recording rule"
    assert len(DASHBOARD_FILES) >= 2, "one dashboard per audience: service and capacity"


def test_rules_name_the_committed_ensemble():
    ensemble = load_bundle(REPOSITORY).ensemble.name
    named = {name for rule in rules() for name in re.findall(r'model="([^"]+)"', rule["expr"])}
    named |= {name for _, expr in dashboard_exprs() for name in re.findall(r'model="([^"]+)"', expr)}
    named |= {name for _, expr in dashboard_exprs() for name in re.findall(r'model!="([^"]+)"', expr)}
    assert named == {ensemble}


def test_every_metric_used_exists_in_the_live_metrics(server):
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        live = {line.split("{")[0].split(" ")[0] for line in response.read().decode().splitlines()
                if line and not line.startswith("#")}
    used = {name for rule in rules() for name in metric_names(rule["expr"])} - recorded_names() - {"up"}
    used |= {name for _, expr in dashboard_exprs() for name in metric_names(expr)} - recorded_names() - {"up"}
    missing = used - live - set(monitor.GPU_ONLY_METRICS)
    assert not missing, f"not in the local server's /metrics: {sorted(missing)}"
    assert set(monitor.GPU_ONLY_METRICS) <= used and not set(monitor.GPU_ONLY_METRICS) & live, \
        "the GPU-only metrics are used, and absent here as expected"


def test_server_exports_latency_summaries_in_every_flavor():
    assert "--metrics-config=summary_latencies=true" in SUMMARY_METRICS
    serve_sh = (COMPOSE_FILE.parent / "docker" / "serve.sh").read_text()
    assert all(option in serve_sh for option in SUMMARY_METRICS)


# -- a real Prometheus scraping a real server -----------------------------------------------------
@pytest.mark.integration
def test_prometheus_scrapes_the_server_and_the_rules_count_traffic(promtool_ready, built, tmp_path):
    bundle = load_bundle(REPOSITORY)
    steps = [m for m in (bundle.check.model_name, bundle.preprocess.model_name, bundle.classifier.model_name)]
    ensemble = bundle.ensemble.name
    from scripts import demo

    good = [jpeg for _, jpeg in demo.heldout_samples(12)]
    with local_server(built, log_path=tmp_path / "tritonserver.log") as server:
        target = f"{server.endpoint.address}:{server.endpoint.metrics}"
        with monitor.LocalPrometheus(tmp_path / "prometheus", target, free_ports(1)[0], interval="1s") as prometheus:
            prometheus.wait_for_scrape()  # the counters' zero is seen before the traffic moves them
            answers = send_together(server, bundle, good[:6])
            time.sleep(2)  # a scrape between the two bursts: the rates see the counters move
            answers += send_together(server, bundle, good[6:] + [b"not an image at all"])
            assert sum(isinstance(a, Exception) for a in answers) == 1, answers
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rate = prometheus.values("model:nv_inference_request_success:rate5m")
                failure = prometheus.values("model:nv_inference_request_failure:ratio_rate5m")
                batch = prometheus.values("model:nv_inference_batch_size:rate5m")
                if rate.get(ensemble, 0) > 0 and failure.get(ensemble, 0) > 0 and all(batch.get(s, 0) >= 1 for s in steps):
                    break
                time.sleep(1)
            failures = prometheus.values(f'sum by (model) (nv_inference_request_failure{{model="{ensemble}"}})')
            reasons = prometheus.values(f'model_reason:nv_inference_request_failure:rate5m{{model="{ensemble}"}} > 0', "reason")
            up = prometheus.targets_up()
    print(f"request rate {rate}, failure ratio {failure}, batch size {batch}, failures {failures} by reason {reasons}")
    assert up[monitor.TRITON_JOB] and up[monitor.SELF_JOB]
    assert rate[ensemble] > 0
    # Measured on tritonserver 2.51: one failed ensemble request counts twice (reason OTHER), and the image
    # check, whose python model answers the bad image with an error, counts it as a success.
    assert failures == {ensemble: FAILURES_PER_FAILED_ENSEMBLE_REQUEST}, "the one bad image is what Prometheus counted"
    assert 0 < failure[ensemble] < 0.5, "the failure ratio counts it among the good ones"
    assert set(reasons), "the failure has a reason"
    assert all(batch[s] >= 1 for s in steps), batch


def test_make_monitor_without_prometheus_says_how_to_install_it(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "scripts", "monitor", "--build-dir", str(tmp_path)], capture_output=True,
                          text=True, env={**os.environ, "PATH": str(tmp_path)}, timeout=60)
    assert done.returncode == 2
    assert "prometheus is not installed: install Prometheus: `apt-get install prometheus`" in done.stderr
