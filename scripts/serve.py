"""Serve: a model repository in, a running real `tritonserver` out (the binary in nvidia-pytriton).

`local_server(layout, ...)` is the one way this project starts a server: `make serve`, `make
loadtest`, the benchmarks and the tests all go through it. `LocalServer` starts the server on an
`Endpoint` (client.defaults), waits until it is ready (every model loaded and warmed up), and stops
it cleanly.
Defaults are safe: endpoints bind to 127.0.0.1, no repository polling, and the admin APIs
(model repository, config, shared memory, logging, trace, statistics) need the `admin-key` header.
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from client import defaults
from client.defaults import ADMIN_HEADER, Endpoint
from scripts import releases, tritonserver
from scripts.config import read_config
from scripts.constants import (
    ALLOW_KNOWN_CVES_ENV,
    BACKEND_PLATFORM,
    CONFIG_FILENAME,
    DEFAULT_MODEL_CONTROL,
    MODEL_CONTROL_ENV,
    MODEL_CONTROL_MODES,
    SERVED_FLAVOR,
    TLS_CA,
    TLS_CERT,
    TLS_DIR_ENV,
    TLS_KEY,
)
from scripts.layout import Layout
from scripts.tritonserver import ServerError

RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "logging", "trace", "statistics")
# Latency percentiles in /metrics (nv_*_summary_us{quantile=...}), read by monitoring/'s recording rules;
# docker/serve.sh passes the same option.
SUMMARY_METRICS = ("--metrics-config=summary_latencies=true",)
PYTHON_BACKEND = "python"  # shipped with the server: prepare_backends puts it in place


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on the loopback address right now (for tests and benchmarks)."""
    import socket

    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((defaults.DEFAULT_ADDRESS, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_endpoint() -> Endpoint:
    """Three ports free on the loopback address (tests and benchmarks run beside a dev server)."""
    return Endpoint(defaults.DEFAULT_ADDRESS, *free_ports(3))


def prepare_backends(directory: Path) -> Path:
    """A backend directory holding the python backend with the stub for this interpreter's version.

    The wheel ships one stub per Python version; Triton expects exactly one, beside the backend library.
    """
    dist = tritonserver.home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no python backend stub for Python {version}")
    python_dir = directory / PYTHON_BACKEND
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in [*(dist / "backends" / "python").glob("*.*"), stub]:
        target = python_dir / source.name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copy2(source, target)
    return directory


def server_environment() -> dict[str, str]:
    """The environment the server and its python stubs need.

    The stub embeds Python and finds its prefix by looking up `python3` on PATH: the venv's bin
    must come first or the stub imports another interpreter's numpy (and corrupts tensors).
    The stub also links libpython, found in the interpreter's LIBDIR.
    """
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libpython = sysconfig.get_config_var("INSTSONAME") or ""
    found = (Path(libdir) / libpython).exists() or ctypes.util.find_library(libpython[3:].split(".so")[0])
    if ".so" in libpython and not found:
        raise ServerError(f"the python backend stub needs {libpython}, not found in {libdir}: install the shared "
                          f"Python library (Debian: apt-get install lib{libpython.split('.so')[0].removeprefix('lib')})")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libs = [str(tritonserver.libraries()), libdir]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    env.pop("PYTHONPATH", None)
    return env


def missing_backends(repository: Path, backends: Path) -> list[str]:
    """The backends the models of `repository` use that `backends` does not hold (python comes with the server).

    Triton loads backend <name> from <backend directory>/<name>/libtriton_<name>.so.
    """
    platform_backend = {platform: backend for backend, platform in BACKEND_PLATFORM.items()}
    needed = set()
    for path in Path(repository).glob(f"*/{CONFIG_FILENAME}"):
        config = read_config(path)
        needed.add(config.backend or platform_backend.get(config.platform, ""))
    needed -= {"", PYTHON_BACKEND}
    return sorted(name for name in needed if not (Path(backends) / name / f"libtriton_{name}.so").is_file())


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_refusal(address: str, version: str = tritonserver.SERVER_VERSION) -> str | None:
    """Why tritonserver `version` must not listen on `address`, or None when it may: a server with known
    unfixed CVEs stays on loopback unless $TRITON_ALLOW_KNOWN_CVES=1 says its user accepts the risk."""
    if is_loopback(address) or os.environ.get(ALLOW_KNOWN_CVES_ENV) == "1":
        return None
    release = releases.of_triton(version)
    known = releases.affecting(release.ngc) if release else None
    if known == []:
        return None
    severe = " (remote code execution among them)" if known and any("RCE" in b.summary for b in known) else ""
    what = (f"{sum(len(b.cves) for b in known)} known unfixed CVEs{severe}, from the Triton security bulletins "
            f"{', '.join(sorted({b.id for b in known}))} (NGC {release.ngc})" if known
            else "no known release, so its CVEs are unknown")
    return (f"refusing to serve tritonserver {version} on {address}: it has {what}, and {address} is not a loopback "
            f"address. Serve on 127.0.0.1 (put an up-to-date proxy in front to share it), or set "
            f"{ALLOW_KNOWN_CVES_ENV}=1 to accept the risk (README, \"Security\").")


def _terminate_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent process dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclasses.dataclass(frozen=True)
class GrpcTls:
    """gRPC over TLS (Triton's --grpc-use-ssl options): the server's certificate and key, and with a CA,
    mutual TLS (clients must present a certificate that CA signed). HTTP and metrics stay plain."""

    cert: Path
    key: Path
    ca: Path | None = None

    @classmethod
    def from_dir(cls, folder: Path) -> GrpcTls | None:
        """The TLS of `folder` (server.crt and server.key, optionally ca.crt), or None when it holds none."""
        cert, key, ca = (Path(folder) / name for name in (TLS_CERT, TLS_KEY, TLS_CA))
        if not cert.is_file() and not key.is_file():
            return None
        if not (cert.is_file() and key.is_file()):
            raise ServerError(f"{folder}: gRPC TLS needs both {TLS_CERT} and {TLS_KEY}")
        return cls(cert.resolve(), key.resolve(), ca.resolve() if ca.is_file() else None)

    @classmethod
    def from_env(cls, default: Path) -> GrpcTls | None:
        return cls.from_dir(Path(os.environ.get(TLS_DIR_ENV) or default))

    def options(self) -> list[str]:
        mutual = [f"--grpc-root-cert={self.ca}", "--grpc-use-ssl-mutual=true"] if self.ca else []
        return ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}", *mutual]


@dataclasses.dataclass
class LocalServer:
    repository: Path
    backends: Path
    endpoint: Endpoint
    admin_key: str = dataclasses.field(default_factory=lambda: defaults.admin_key() or secrets.token_hex(24))
    log_path: Path | None = None
    model_control: str = DEFAULT_MODEL_CONTROL
    grpc_tls: GrpcTls | None = None
    process: subprocess.Popen | None = None
    shm_prefix: str = dataclasses.field(default_factory=lambda: f"triton_bundle_{os.getpid()}_{secrets.token_hex(4)}")

    @property
    def http_url(self) -> str:
        return self.endpoint.http_url

    @property
    def grpc_url(self) -> str:
        return self.endpoint.grpc_url

    @property
    def metrics_url(self) -> str:
        return self.endpoint.metrics_url

    @property
    def admin_headers(self) -> dict[str, str]:
        return {ADMIN_HEADER: self.admin_key}

    def command(self) -> list[str]:
        restriction = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        return [
            str(tritonserver.binary()),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={Path(self.backends).resolve()}",
            f"--http-address={self.endpoint.address}",
            f"--http-port={self.endpoint.http}",
            f"--grpc-address={self.endpoint.address}",
            f"--grpc-port={self.endpoint.grpc}",
            f"--metrics-address={self.endpoint.address}",
            f"--metrics-port={self.endpoint.metrics}",
            *SUMMARY_METRICS,
            f"--http-restricted-api={restriction}",
            f"--grpc-restricted-protocol={restriction}",
            f"--model-control-mode={self.model_control}",
            # Explicit mode loads nothing by itself: load every model at start, so that ready means ready.
            *(["--load-model=*"] if self.model_control == "explicit" else []),
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            "--exit-timeout-secs=10",
            # A distinct shared-memory prefix lets several servers (tests, a dev server) coexist.
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *(self.grpc_tls.options() if self.grpc_tls else []),
        ]

    def start(self) -> LocalServer:
        refusal = exposure_refusal(self.endpoint.address)
        if refusal:
            raise ServerError(refusal)
        prepare_backends(self.backends)
        missing = missing_backends(self.repository, self.backends)
        if missing:
            raise ServerError(f"{self.repository} needs the {', '.join(missing)} backend(s), not in {self.backends}: "
                              "build them with `make backends`")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = open(self.log_path, "wb")
        else:
            output = None
        # A session of its own: a terminal's Ctrl-C reaches only us, and stop() sends the server one
        # SIGINT. If we die without stopping it, the kernel sends it SIGTERM (no orphaned servers).
        self.process = subprocess.Popen(self.command(), env=server_environment(), stdout=output,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_terminate_with_parent)
        if output is not None:
            output.close()
        return self

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        # Triton prints wide option tables at start-up; they never explain a failure.
        useful = [line for line in text if not line.startswith(("+", "|"))]
        return "\n".join(useful[-lines:])

    def is_ready(self) -> bool:
        import tritonclient.http as httpclient

        try:
            client = httpclient.InferenceServerClient(self.http_url, connection_timeout=1.0, network_timeout=2.0)
            try:
                return client.is_server_ready()
            finally:
                client.close()
        except Exception:
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the server (SIGINT, then SIGKILL after `timeout`) and remove what a crash leaves in /dev/shm."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reap_stubs()
        for leftover in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            leftover.unlink(missing_ok=True)
        return self.process.returncode

    def _reap_stubs(self) -> None:
        """Kill python-backend stubs a crashed server left behind (they outlive a SIGKILLed server).

        Each stub's command line names its shared-memory region, which starts with our prefix.
        """
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if self.shm_prefix.encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue  # gone, or not ours to read

    def __enter__(self) -> LocalServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def model_control_from_env() -> str:
    """$TRITON_MODEL_CONTROL_MODE: none (default) or explicit."""
    mode = os.environ.get(MODEL_CONTROL_ENV) or DEFAULT_MODEL_CONTROL
    if mode not in MODEL_CONTROL_MODES:
        raise ServerError(f"{MODEL_CONTROL_ENV} must be one of {', '.join(MODEL_CONTROL_MODES)}, not {mode!r} "
                          "(poll would load half-written files)")
    return mode


def local_server(layout: Layout, repository: Path | None = None, endpoint: Endpoint | None = None,
                 log_path: Path | None = None, model_control: str = DEFAULT_MODEL_CONTROL,
                 grpc_tls: GrpcTls | None = None) -> LocalServer:
    """A server (not started) for `repository` (default: the layout's local flavor), with its backends
    under the layout, on `endpoint` (default: free loopback ports), logging to `log_path`."""
    return LocalServer(
        repository=repository or layout.flavor(SERVED_FLAVOR),
        backends=layout.backends,
        endpoint=endpoint or free_endpoint(),
        log_path=log_path,
        model_control=model_control,
        grpc_tls=grpc_tls,
    )
