"""`make monitor`: Prometheus on this machine, scraping the local server with the bundle's rules.

The configuration is `monitoring/prometheus.yml`, the compose profile's own file, with only what differs
here rewritten: the Triton target (the local server's metrics port), Prometheus's own address, and
the rule files' paths. Debian's `prometheus` package provides the binary (and `promtool`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from scripts.layout import MONITORING

PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
RULES = MONITORING / "rules"
RULE_TESTS = MONITORING / "tests"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
TRITON_JOB, SELF_JOB = "triton", "prometheus"
DEFAULT_ADDRESS, DEFAULT_PORT = "127.0.0.1", 9090
PORT_ENV = "PROMETHEUS_PORT"
INSTALL_HINT = "install Prometheus: `apt-get install prometheus` (Debian/Ubuntu; it brings promtool too)"
# Triton exports these only where it sees a GPU: never on this machine's servers.
GPU_ONLY_METRICS = ("nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes")


class PrometheusMissing(RuntimeError):
    """The prometheus (or promtool) binary is not installed."""


def binary(name: str = "prometheus") -> str:
    found = shutil.which(name)
    if found is None:
        raise PrometheusMissing(f"{name} is not installed: {INSTALL_HINT}")
    return found


def local_config(triton_target: str, listen: str, interval: str | None = None) -> dict:
    """monitoring/prometheus.yml for this machine: the local server as the Triton target, absolute rule
    paths, and optionally a shorter scrape and evaluation interval (the tests use 1s)."""
    import yaml

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / pattern) for pattern in config["rule_files"]]
    targets = {TRITON_JOB: triton_target, SELF_JOB: listen}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    if interval:
        config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    return config


@dataclasses.dataclass
class LocalPrometheus:
    """A Prometheus process with its config and data under `directory`."""

    directory: Path
    triton_target: str  # host:port of Triton's metrics
    port: int = DEFAULT_PORT
    address: str = DEFAULT_ADDRESS
    interval: str | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self, timeout: float = 60) -> LocalPrometheus:
        import yaml

        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "prometheus.yml"
        listen = f"{self.address}:{self.port}"
        config_path.write_text(yaml.safe_dump(local_config(self.triton_target, listen, self.interval), sort_keys=False))
        log = open(self.directory / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [binary(), f"--config.file={config_path}", f"--storage.tsdb.path={self.directory / 'data'}",
             f"--web.listen-address={listen}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.process.returncode}): see {self.directory / 'prometheus.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready at {self.url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def query(self, expr: str) -> list[dict]:
        """The instant vector `expr` evaluates to now, through the HTTP API."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        return body["data"]["result"]

    def values(self, expr: str, label: str = "model") -> dict[str, float]:
        """{value of `label`: sample value} of `expr` now."""
        return {sample["metric"].get(label, ""): float(sample["value"][1]) for sample in self.query(expr)}

    def wait_for_scrape(self, job: str = TRITON_JOB, timeout: float = 60) -> None:
        """Until `job` has been scraped (Prometheus applies new targets only every few seconds)."""
        deadline = time.monotonic() + timeout
        while not self.values(f'up{{job="{job}"}} == 1', "job"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus has not scraped {job} within {timeout:.0f}s: see {self.url}/targets")
            time.sleep(0.5)

    def targets_up(self) -> dict[str, bool]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as response:
            active = json.load(response)["data"]["activeTargets"]
        return {target["labels"]["job"]: target["health"] == "up" for target in active}


def promtool(*args: str) -> subprocess.CompletedProcess:
    """promtool with `args`, from the monitoring folder (rule tests name their files relative to it)."""
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, cwd=MONITORING, timeout=300)
