"""Doctor: is this host ready for `docker compose up`? Each check says ok, warn or fail, what it saw,
and for a warn or a fail the command or edit that fixes it.

It runs the host's own `docker` and `nvidia-smi` (so it works, and fails clearly, on a machine with
neither), reads `.env` and `secrets/` as Compose will, and validates the model repository. Exit code 0
when nothing failed (warnings allowed), 1 when a check failed, 2 on a usage error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from client import defaults
from scripts import releases
from scripts.build import model_choice
from scripts.constants import ADMIN_KEY_MIN_LENGTH, DALI_SCRIPT, DEMO_MODEL, GPU, PYTHON_MODEL, TENSORRT_PLAN
from scripts.layout import PROJECT, Layout

OK, WARN, FAIL = "ok", "warn", "fail"
SERVER_UID = 1000  # the `triton-server` user of the NGC image, which reads the mounted admin key
COMPOSE_MIN = (2, 0)  # profiles and `service_completed_successfully` are Compose v2's
# Free space Docker needs for this stack: the tritonserver image alone is about 15.5 GB unpacked
# (24.06-py3, as reported by NVIDIA's forum users; later releases are not smaller), the TensorRT
# builder image is of the same order, and the build writes a few GB more.
DOCKER_SPACE_GB = 40
BUILD_SPACE_GB = 5
MIN_FREE_GPU_MEMORY_MB = 2048  # the demo engine, DALI and Triton's own use fit well under this
ENV_FILE = PROJECT / ".env"
ADMIN_KEY_FILE = PROJECT / "secrets" / "triton_admin_key"
RELEASE_KEY, BUILDER_USER_KEY = "NGC_RELEASE", "BUILDER_USER"
BUILDER_USER_DEFAULT = "1000:1000"  # docker-compose.yml's ${BUILDER_USER:-...} (a test keeps the two equal)
LEGACY_DALI_KEY = "DALI_VERSION"  # read by the builder until the pipeline shipped as dali.py
BIND_ADDRESS_KEY = "TRITON_BIND_ADDRESS"  # docker-compose.yml publishes the ports on this address
COMPOSE_KEYS = (RELEASE_KEY, BUILDER_USER_KEY, BIND_ADDRESS_KEY, *defaults.PORT_ENV.values())


@dataclasses.dataclass(frozen=True)
class Check:
    check: str
    status: str
    detail: str
    fix: str = ""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as Compose reads a .env file: comments and blank lines skipped, quotes removed,
    and an unquoted value ends at " #" (an inline comment)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            if value[:1] in ("'", '"') and value[-1:] == value[:1] and len(value) > 1:
                value = value[1:-1]
            else:
                value = re.split(r"\s+#", value, maxsplit=1)[0]
            values[key] = value
    return values


def compose_settings(path: Path) -> dict[str, str]:
    """The values Compose interpolates: the .env file's, each overridden by a shell variable of the same
    name (Compose's order of precedence)."""
    values = read_env_file(path) if path.is_file() else {}
    return {**values, **{key: os.environ[key] for key in (*values, *COMPOSE_KEYS) if key in os.environ}}


def _run(*command: str, timeout: float = 20.0) -> subprocess.CompletedProcess | None:
    """The command's result, or None when the program is not installed."""
    if not shutil.which(command[0]):
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(command, 124, "", f"timed out after {exc.timeout:g}s")


def _numeric(value: str) -> bool:
    return bool(re.fullmatch(r"\d+(\.\d+)*", value))


def _bind_error(address: str, port: int) -> str | None:
    """Why `address:port` cannot be listened on now, or None when it can. SO_REUSEADDR as servers set it:
    a port in TIME_WAIT after the stack stopped is free for them."""
    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _json(text: str) -> dict:
    try:
        value = json.loads(text.strip().splitlines()[0]) if text.strip() else {}
    except (ValueError, IndexError):
        return {}
    return value if isinstance(value, dict) else {}


def triton_answers(endpoint: defaults.Endpoint, kind: str) -> bool:
    """Whether the port of `kind` ("http", "grpc", "metrics") is a live Triton's."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    try:
        if kind == "grpc":
            with grpcclient.InferenceServerClient(endpoint.grpc_url) as client:
                return client.is_server_live(client_timeout=3)
        if kind == "http":
            with httpclient.InferenceServerClient(endpoint.http_url, connection_timeout=3, network_timeout=3) as client:
                return client.is_server_live()
        with urllib.request.urlopen(endpoint.metrics_url, timeout=3) as answer:
            return b"nv_inference_" in answer.read()
    except Exception:  # whatever listens there, it is not a Triton that answers
        return False


class Doctor:
    def __init__(self, env_file: Path = ENV_FILE, admin_key_file: Path = ADMIN_KEY_FILE, layout: Layout | None = None):
        self.env_file = env_file
        self.admin_key_file = admin_key_file
        self.layout = layout or Layout()
        self.env = compose_settings(env_file)
        self.docker_info: dict = {}

    def endpoint(self) -> defaults.Endpoint:
        """Where the compose stack publishes the server, as .env says (EnvironmentValueError on a bad port)."""
        ports = {kind: defaults.parse_port(key, self.env.get(key) or str(defaults.DEFAULT_PORTS[kind]))
                 for kind, key in defaults.PORT_ENV.items()}
        return defaults.Endpoint(self.env.get(BIND_ADDRESS_KEY) or defaults.DEFAULT_ADDRESS, **ports)

    def run(self) -> list[Check]:
        return [check for section in (self.docker, self.gpus, self.release, self.settings, self.repository)
                for check in section()]

    # -- Docker ----------------------------------------------------------------------------------
    def docker(self) -> Iterator[Check]:
        install = "install Docker Engine: https://docs.docker.com/engine/install/"
        version = _run("docker", "version", "--format", "{{json .}}")
        if version is None:
            yield Check("docker-engine", FAIL, "docker: command not found", install)
            yield Check("docker-compose", FAIL, "not checked: no docker", install)
            yield Check("nvidia-container-toolkit", FAIL, "not checked: no docker", install)
            return
        server = _json(version.stdout).get("Server")
        if not server:
            reason = (version.stderr.strip().splitlines() or ["no answer"])[-1]
            yield Check("docker-engine", FAIL, f"the engine does not answer: {reason}",
                        "start it (sudo systemctl start docker), and let your user reach it "
                        "(sudo usermod -aG docker $USER, then log in again)")
        else:
            yield Check("docker-engine", OK, f"Docker Engine {server.get('Version', '?')} (API {server.get('ApiVersion', '?')})")
            self.docker_info = _json((_run("docker", "info", "--format", "{{json .}}") or version).stdout)
        compose = _run("docker", "compose", "version", "--format", "json")
        found = _json(compose.stdout).get("version", "") if compose else ""
        numbers = releases.version_tuple(found.lstrip("v"))
        if not numbers:
            yield Check("docker-compose", FAIL, "no `docker compose` (the Compose v2 plugin)",
                        "install it: sudo apt-get install docker-compose-plugin (Docker's apt repository)")
        elif numbers[:2] < COMPOSE_MIN:
            yield Check("docker-compose", FAIL, f"Compose {found}: profiles and service_completed_successfully need v2",
                        "upgrade: sudo apt-get install docker-compose-plugin")
        else:
            yield Check("docker-compose", OK, f"Compose {found}")
        if not self.docker_info:
            yield Check("nvidia-container-toolkit", FAIL, "not checked: the engine does not answer", "start the engine first")
            return
        runtimes = sorted(self.docker_info.get("Runtimes") or {})
        discovered = [device.get("ID", "") for device in self.docker_info.get("DiscoveredDevices") or []]
        devices = [device for device in discovered if device.startswith("nvidia.com/gpu")]
        if "nvidia" in runtimes or devices:
            seen = "the nvidia runtime" if "nvidia" in runtimes else f"CDI devices {', '.join(devices)}"
            yield Check("nvidia-container-toolkit", OK, f"Docker sees {seen}")
        else:
            yield Check("nvidia-container-toolkit", FAIL, f"Docker has no nvidia runtime and no CDI GPU devices (runtimes: "
                        f"{', '.join(runtimes) or 'none'})",
                        "install the NVIDIA Container Toolkit, then: sudo nvidia-ctk runtime configure --runtime=docker "
                        "&& sudo systemctl restart docker")

    # -- GPUs --------------------------------------------------------------------------------------
    def gpus(self) -> Iterator[Check]:
        release = releases.RELEASES.get(self.env.get(RELEASE_KEY, ""))
        minimum = release.min_driver if release else releases.CUDA13_MIN_DRIVER
        fields = ("name", "driver_version", "compute_cap", "memory.free", "memory.total")
        smi = _run("nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits")
        rows = [[part.strip() for part in line.split(",")] for line in smi.stdout.strip().splitlines()] if smi else []
        if smi is None or smi.returncode != 0 or not rows or any(len(row) != len(fields) for row in rows):
            seen = "nvidia-smi: command not found" if smi is None else (smi.stderr or smi.stdout).strip() or "no GPU listed"
            yield Check("nvidia-driver", FAIL, f"no NVIDIA driver answers: {seen}",
                        f"install the NVIDIA data-center driver {minimum} or later, and reboot")
            return
        # nvidia-smi prints "[N/A]" (or "[Not Supported]") for what a GPU or a driver does not report.
        gpus = [{field: value if field == "name" or _numeric(value) else None
                 for field, value in zip(fields, row, strict=True)} for row in rows]
        needs = f"CUDA {release.cuda} of NGC {release.ngc}" if release else "CUDA 13"
        for driver in sorted({gpu["driver_version"] or "not reported" for gpu in gpus}):
            if not _numeric(driver) or releases.version_tuple(driver) < releases.version_tuple(minimum):
                branch = minimum.split(".")[0]
                yield Check("nvidia-driver", FAIL, f"driver {driver}, below {minimum} (what {needs} needs through CUDA's "
                            "minor version compatibility)",
                            f"install driver {minimum} or later (e.g. sudo apt-get install nvidia-driver-{branch}-server), "
                            "then reboot. (On a data-center GPU, NVIDIA's forward compatibility may run the image on "
                            "some older branches: see docs.nvidia.com/deploy/cuda-compatibility)")
            else:
                yield Check("nvidia-driver", OK, f"driver {driver} (at least {minimum}, for {needs})")
        lowest = release.min_compute_capability if release else releases.MIN_COMPUTE_CAPABILITY
        for index, gpu in enumerate(gpus):
            yield self._gpu(index, gpu, lowest)

    @staticmethod
    def _gpu(index: int, gpu: dict, lowest: str) -> Check:
        capability, free, total = gpu["compute_cap"], gpu["memory.free"], gpu["memory.total"]
        detail = (f"GPU {index}: {gpu['name']}, compute capability {capability or 'not reported'}, "
                  + (f"{free} of {total} MiB free" if free and total else "free memory not reported"))
        if capability is None:
            return Check("gpu", WARN, detail, "update the driver (nvidia-smi reports compute_cap from R510 on); the "
                         f"pinned release needs compute capability {lowest} or later")
        if releases.version_tuple(capability) < releases.version_tuple(lowest):
            return Check("gpu", FAIL, detail + f": below {lowest}",
                         f"the pinned release supports GPUs of compute capability {lowest} and later: use one of those")
        if free is None:
            return Check("gpu", WARN, detail, f"check that at least {MIN_FREE_GPU_MEMORY_MB} MiB are free (nvidia-smi)")
        if float(free) < MIN_FREE_GPU_MEMORY_MB:
            return Check("gpu", WARN, detail, f"free GPU memory (at least {MIN_FREE_GPU_MEMORY_MB} MiB): "
                         "stop what uses it (nvidia-smi lists the processes)")
        return Check("gpu", OK, detail)

    # -- the pinned release ------------------------------------------------------------------------
    def release(self) -> Iterator[Check]:
        ngc = self.env.get(RELEASE_KEY, "")
        known = ", ".join(releases.RELEASES)
        if not self.env_file.is_file():
            yield Check("env-file", FAIL, f"{self.env_file} does not exist: Compose reads every setting from it",
                        "restore it from the repository: git checkout -- .env")
        if not ngc:
            yield Check("ngc-release", FAIL, f"{RELEASE_KEY} is not set: docker compose refuses to start without it",
                        f"set {RELEASE_KEY}={releases.first_clear_release()} in {self.env_file}")
            return
        if ngc not in releases.RELEASES:
            yield Check("ngc-release", WARN, f"{RELEASE_KEY}={ngc} is not one of the releases this project knows "
                        f"({known}): its driver minimum and bulletins are not checked",
                        f"set {RELEASE_KEY} in {self.env_file} to one of {known}")
            return
        row = releases.RELEASES[ngc]
        yield Check("ngc-release", OK, f"NGC {ngc}: Triton {row.triton}, CUDA {row.cuda}, driver >= {row.min_driver}, "
                    f"DALI {row.dali or 'not known'}, TensorRT {row.tensorrt or 'not known'}")
        stale = self.env.get(LEGACY_DALI_KEY)
        if stale is not None:
            shipped = f" (NGC {ngc} ships DALI {row.dali})" if row.dali and row.dali != stale else ""
            yield Check("dali-version", WARN, f"{LEGACY_DALI_KEY}={stale} in .env is no longer read{shipped}: the server's "
                        "own DALI serializes the pipeline from dali.py, so no DALI version has to match",
                        f"delete the {LEGACY_DALI_KEY} line from {self.env_file}")
        affecting = releases.affecting(ngc)
        if affecting:
            cves = sum(len(bulletin.cves) for bulletin in affecting)
            clear = releases.first_clear_release()
            ids = ", ".join(sorted({bulletin.id for bulletin in affecting}))
            newest = max(affecting, key=lambda bulletin: bulletin.published)
            latest = [bulletin for bulletin in affecting if bulletin.id == newest.id]
            described = "; ".join(f"{', '.join(bulletin.cves)}: {bulletin.summary}" for bulletin in latest)
            yield Check("security", WARN, f"NGC {ngc} lacks the fixes for {cves} CVEs of Triton security bulletins {ids} "
                        f"(the latest, {newest.id} of {newest.published}: {described}; all in scripts/releases.py)",
                        f"move {RELEASE_KEY} to {clear} or later" if clear else "no known release fixes them all yet")
        else:
            yield Check("security", OK, f"no known Triton security bulletin affects NGC {ngc}")

    # -- settings: .env, ports, the admin key, disk --------------------------------------------------
    def settings(self) -> Iterator[Check]:
        owner = self.layout.repository.parent.stat()
        wanted = f"{owner.st_uid}:{owner.st_gid}"
        builder = self.env.get(BUILDER_USER_KEY) or BUILDER_USER_DEFAULT
        if builder == wanted:
            yield Check("builder-user", OK, f"{BUILDER_USER_KEY}={builder}, the checkout's owner")
        else:
            yield Check("builder-user", FAIL, f"{BUILDER_USER_KEY}={builder} but the checkout belongs to {wanted}: the "
                        "builder could not write build/ and model_repository/",
                        f"sed -i 's/^{BUILDER_USER_KEY}=.*/{BUILDER_USER_KEY}={wanted}/' {self.env_file}")
        yield from self.ports()
        yield self.admin_key()
        yield from self.disk()

    def ports(self) -> Iterator[Check]:
        try:
            endpoint = self.endpoint()
        except defaults.EnvironmentValueError as exc:
            yield Check("ports", FAIL, f"{exc} (in {self.env_file})", "set the port to a number from 1 to 65535")
            return
        for kind, key in defaults.PORT_ENV.items():
            port = getattr(endpoint, kind)
            reason = _bind_error(endpoint.address, port)
            if reason is None:
                yield Check(f"port-{kind}", OK, f"{endpoint.address}:{port} is free")
            elif triton_answers(endpoint, kind):
                yield Check(f"port-{kind}", OK, f"{endpoint.address}:{port}: a Triton server answers (the stack is up)")
            else:
                yield Check(f"port-{kind}", FAIL, f"{endpoint.address}:{port} is taken or cannot be bound ({reason})",
                            f"stop what listens there (ss -ltnp 'sport = :{port}'), or set {key} in {self.env_file}")

    def admin_key(self) -> Check:
        path = self.admin_key_file
        fix_mode = f"sudo chgrp {SERVER_UID} {path} && chmod 0440 {path}"
        create = f"openssl rand -hex 32 > {path} && {fix_mode}"
        if not path.is_file():
            return Check("admin-key", FAIL, f"{path} does not exist: the server refuses to start without it", create)
        status = path.stat()
        mode = status.st_mode & 0o777
        # Compose mounts the file with its host owner and mode; the kernel looks at the owner's bits for
        # the owner, the group's for a member, the others' for everyone else.
        if status.st_uid == SERVER_UID:
            readable = bool(mode & 0o400)
        elif status.st_gid == SERVER_UID:
            readable = bool(mode & 0o040)
        else:
            readable = bool(mode & 0o004)
        seen = f"owner {status.st_uid}:{status.st_gid}, mode {oct(mode)}"
        if not readable:
            return Check("admin-key", FAIL, f"{path} is not readable by uid {SERVER_UID} ({seen})", fix_mode)
        if not os.access(path, os.R_OK):
            return Check("admin-key", WARN, f"{path} is readable by uid {SERVER_UID} ({seen}) but not by this user: its "
                         "length is unchecked", f"sudo {sys.executable} -m scripts doctor, to check it")
        length = len(path.read_text().strip())
        if length < ADMIN_KEY_MIN_LENGTH:
            return Check("admin-key", FAIL, f"{path} holds {length} characters, fewer than {ADMIN_KEY_MIN_LENGTH}", create)
        if mode & 0o004:
            return Check("admin-key", WARN, f"{path} is readable by every user of this host ({seen})", fix_mode)
        return Check("admin-key", OK, f"{path}: {length} characters, readable by uid {SERVER_UID}")

    def disk(self) -> Iterator[Check]:
        root = Path(self.docker_info.get("DockerRootDir") or "/var/lib/docker")
        places = [(root if root.exists() else Path("/"), DOCKER_SPACE_GB, "Docker's images"),
                  (self.layout.build_dir.parent, BUILD_SPACE_GB, "the build")]
        for place, needed, what in places:
            free = shutil.disk_usage(place).free / 1e9
            detail = f"{free:.0f} GB free at {place} for {what} (needs about {needed} GB)"
            if free < needed:
                yield Check("disk", FAIL, detail, f"free space at {place} (docker system prune removes unused images)")
            else:
                yield Check("disk", OK, detail)

    # -- the model repository ----------------------------------------------------------------------
    def repository(self) -> Iterator[Check]:
        from scripts.validate import validate

        report = validate(self.layout.repository, flavor=GPU)
        if not report.ok():
            first = report.errors[0]
            yield Check("model-repository", FAIL, f"{report.summary()}; first: {first}", "fix the configs (make validate)")
        else:
            yield Check("model-repository", OK, report.summary())
        from scripts.config import load_bundle

        bundle = load_bundle(self.layout.repository) if report.ok() else None
        if bundle is None:
            return
        needed = [(bundle.classifier.model_name, TENSORRT_PLAN), (bundle.preprocess.model_name, DALI_SCRIPT),
                  *([(bundle.check.model_name, PYTHON_MODEL)] if bundle.check else [])]
        missing = [str(bundle.artifact(model, name)) for model, name in needed if not bundle.artifact(model, name).is_file()]
        project = self.layout.project
        choice = model_choice(self.layout, self.env.get("MODEL") or None)
        model = Path(choice.model) if Path(choice.model).is_absolute() else project / choice.model
        if not missing:
            yield Check("artifacts", OK, "the engine and the pipeline are built")
        elif choice.model == DEMO_MODEL or (model.is_file() and model.resolve().is_relative_to(project)):
            yield Check("artifacts", OK, f"not built yet ({', '.join(missing)}): the compose builder builds them from "
                        f"the {choice.model} model")
        else:
            where = f"MODEL={self.env['MODEL']} in {self.env_file}" if self.env.get("MODEL") else "the adopted model"
            yield Check("artifacts", FAIL, f"{where} is {choice.model}: not a file inside the project, which is all the "
                        "builder container sees", "put the model file in the project and adopt it from there "
                        "(make adopt MODEL=models/model.pth ...), or set MODEL in .env to its path relative to the project")


def format_checks(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{check.status:<5} {check.check:<25} {check.detail}")
        if check.fix and check.status != OK:
            lines.append(f"{'':<31}fix: {check.fix}")
    failed, warned = sum(c.status == FAIL for c in checks), sum(c.status == WARN for c in checks)
    lines.append(f"doctor: {len(checks)} checks, {failed} failed, {warned} warnings")
    return "\n".join(lines)
