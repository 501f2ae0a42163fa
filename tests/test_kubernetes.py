"""The Helm chart, offline: `make k8s-check` passes on the defaults and every ci/ values file, its validators
catch broken objects, and the rendered objects keep the promises of docs/kubernetes.md (hardening, one
image release, the compose entry point, headless gRPC, autoscaling on monitoring/'s recording rule)."""

from __future__ import annotations

import copy

import pytest
import yaml

from scripts import k8s
from scripts.doctor import read_env_file
from scripts.layout import COMPOSE_FILE, MONITORING, PROJECT


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    try:
        k8s.helm()
    except k8s.CheckFailed as exc:
        pytest.fail(str(exc))
    return {r.name: r for r in k8s.check(tmp_path_factory.mktemp("k8s"), progress=print)}


def only(rendered_set, kind: str) -> dict:
    found = [o for o in rendered_set.objects if o["kind"] == kind]
    assert len(found) == 1, f"{rendered_set.name}: {len(found)} {kind}"
    return found[0]


def kinds(rendered_set) -> set[str]:
    return {o["kind"] for o in rendered_set.objects}


def test_check_passes_on_the_defaults_and_every_ci_values_file(rendered):
    assert set(rendered) == {"default", *(p.stem for p in k8s.CI_VALUES.glob("*.yaml"))} and len(rendered) >= 4
    expected = {"HorizontalPodAutoscaler", "Job", "PersistentVolumeClaim", "ServiceMonitor", "PrometheusRule"}
    assert expected <= kinds(rendered["default"])
    assert "ScaledObject" in kinds(rendered["keda"]) and "HorizontalPodAutoscaler" not in kinds(rendered["keda"])
    assert not {"Job", "PersistentVolumeClaim"} & kinds(rendered["object-storage"])
    off = rendered["monitoring-off"]
    assert not {"ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler"} & kinds(off)
    assert only(off, "Deployment")["spec"]["replicas"] == 3


def test_the_validators_catch_what_is_broken(rendered, tmp_path):
    broken = copy.deepcopy(rendered["default"])
    deployment = only(broken, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy "] = "Always"  # a typo'd field
    with pytest.raises(k8s.CheckFailed, match="Deployment bundle-triton is not valid for Kubernetes"):
        k8s.validate_core(broken)
    old = copy.deepcopy(rendered["default"])
    only(old, "HorizontalPodAutoscaler")["apiVersion"] = "autoscaling/v2beta2"  # removed in Kubernetes 1.26
    with pytest.raises(k8s.CheckFailed, match="HorizontalPodAutoscaler"):
        k8s.validate_core(old)
    monitor = copy.deepcopy(rendered["default"])
    only(monitor, "ServiceMonitor")["spec"]["endpoints"][0]["port"] = 8002  # the CRD wants a port name
    with pytest.raises(k8s.CheckFailed, match="endpoints/0/port must be string"):
        k8s.validate_custom([monitor], tmp_path)


def test_servers_are_hardened_and_match_compose(rendered):
    deployment = only(rendered["default"], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    release = read_env_file(PROJECT / ".env")["NGC_RELEASE"]
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert server["image"] == f"nvcr.io/nvidia/tritonserver:{release}-py3", "the tag comes from .env's NGC_RELEASE"
    assert yaml.safe_load((k8s.CHART / "Chart.yaml").read_text())["appVersion"] == release
    assert server["command"] == compose["x-triton"]["entrypoint"][:2] + ["/opt/bundle/serve.sh"]
    entrypoint = next(o for o in rendered["default"].objects if o["kind"] == "ConfigMap" and "serve.sh" in o.get("data", {}))
    assert entrypoint["data"]["serve.sh"] == (PROJECT / "docker" / "serve.sh").read_text().rstrip("\n")
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"} and compose["x-triton"]["shm_size"] == "1gb"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert volumes["admin-key"]["secret"]["secretName"] == "bundle-triton-admin-key"
    assert {"name": "TRITON_ADMIN_KEY_FILE", "value": "/opt/bundle/admin/admin-key"} in server["env"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "room for engine load and warmup"


def test_the_gpu_type_pins_the_build_and_the_servers(rendered):
    for kind in ("Deployment", "Job"):
        pod = only(rendered["keda"], "Deployment" if kind == "Deployment" else "Job")["spec"]["template"]["spec"]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0] == {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A10G"]}
    volumes = {v["name"]: v for v in only(rendered["default"], "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True


def test_grpc_is_also_headless(rendered):
    services = {o["metadata"]["name"]: o["spec"] for o in rendered["default"].objects if o["kind"] == "Service"}
    assert services["bundle-triton-grpc"]["clusterIP"] == "None"
    assert [p["name"] for p in services["bundle-triton-grpc"]["ports"]] == ["grpc"]
    assert services["bundle-triton"]["type"] == "ClusterIP"
    assert [p["name"] for p in services["bundle-triton"]["ports"]] == ["http", "grpc", "metrics"]


def test_autoscaling_reads_the_recording_rule_of_monitoring(rendered):
    recorded = {r.get("record") for path in (MONITORING / "rules").glob("*.yml")
                for group in yaml.safe_load(path.read_text())["groups"] for r in group["rules"]}
    assert "model:nv_inference_queue_us_per_request:rate5m" in recorded
    hpa = only(rendered["default"], "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    adapter = next(o for o in rendered["default"].objects if o["kind"] == "ConfigMap" and "config.yaml" in o.get("data", {}))
    rule = yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"][0]
    assert rule["seriesQuery"].startswith("model:nv_inference_queue_us_per_request:rate5m")
    assert rule["name"]["as"] == hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
    trigger = only(rendered["keda"], "ScaledObject")["spec"]["triggers"][0]
    query = 'max(model:nv_inference_queue_us_per_request:rate5m{namespace="triton",model="classifier"})'
    assert trigger["metadata"]["query"] == query


def test_prometheus_rule_is_monitorings_rules_not_a_copy(rendered):
    assert (k8s.CHART / "files" / "rules").is_symlink() and (k8s.CHART / "files" / "rules").resolve() == MONITORING / "rules"
    groups = [g for path in sorted((MONITORING / "rules").glob("*.yml")) for g in yaml.safe_load(path.read_text())["groups"]]
    assert only(rendered["default"], "PrometheusRule")["spec"]["groups"] == groups
    monitor = only(rendered["default"], "ServiceMonitor")["spec"]
    service = next(o for o in rendered["default"].objects if o["kind"] == "Service" and o["metadata"]["name"] == "bundle-triton")
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "triton", "the rules select job=\"triton\""


def test_network_policy_lets_only_named_namespaces_in(rendered):
    policy = only(rendered["monitoring-off"], "NetworkPolicy")["spec"]
    serving, metrics = policy["ingress"]
    allowed = [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in serving["from"][1:]]
    assert serving["from"][0] == {"podSelector": {}} and allowed == ["apps", "batch-jobs"]
    assert {p["port"] for p in serving["ports"]} == {"http", "grpc"}
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]
