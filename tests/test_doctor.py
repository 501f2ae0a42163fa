"""`make doctor` on the hosts it is for: stand-in `docker` and `nvidia-smi` on PATH replay what the real
programs printed (tests/data/doctor/README.md says where each recording comes from), and the doctor
runs as users run it, `python -m scripts doctor`, with its exit code and its --json."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from scripts import releases
from scripts.constants import ADMIN_KEY_MIN_LENGTH
from scripts.doctor import COMPOSE_KEYS, read_env_file
from scripts.layout import PROJECT
from scripts.serve import free_ports

RECORDINGS = PROJECT / "tests" / "data" / "doctor"
L40S_R580, RTX4090_R570 = RECORDINGS / "gpus" / "l40s-r580.json", RECORDINGS / "gpus" / "rtx4090-r570.json"
ENGINE_UP, ENGINE_DOWN, NO_TOOLKIT = "engine-up", "engine-down", "no-toolkit:engine-up"
SERVER_GID = 1000
PINNED = read_env_file(PROJECT / ".env")["NGC_RELEASE"]


class Host:
    """A GPU box as the doctor sees it: the programs on PATH, a .env, an admin key file."""

    def __init__(self, root: Path, docker: str = ENGINE_UP, gpus: tuple[Path, ...] = (L40S_R580,), **env: str):
        self.bin = root / "bin"
        self.bin.mkdir()
        programs = ["docker"] + (["nvidia-smi"] if gpus else [])
        for program in programs:
            wrapper = self.bin / program
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{RECORDINGS / "standin.py"}" {program} "$@"\n')
            wrapper.chmod(0o755)
        self.environ = {"PATH": str(self.bin), "STANDIN_GPUS": ":".join(map(str, gpus)),
                        "STANDIN_RECORDINGS": ":".join(str(RECORDINGS / name) for name in docker.split(":"))}
        owner = PROJECT.stat()
        http, grpc, metrics = free_ports(3)
        self.settings = {"NGC_RELEASE": PINNED, "BUILDER_USER": f"{owner.st_uid}:{owner.st_gid}",
                         "TRITON_BIND_ADDRESS": "127.0.0.1", "TRITON_HTTP_PORT": str(http), "TRITON_GRPC_PORT": str(grpc),
                         "TRITON_METRICS_PORT": str(metrics), **env}
        self.env_file = root / ".env"
        self.env_file.write_text("".join(f"{key}={value}\n" for key, value in self.settings.items()))
        self.key_file = root / "triton_admin_key"
        self.key_file.write_text(os.urandom(32).hex() + "\n")
        self.key_file.chmod(0o440)
        if os.geteuid() == 0:
            os.chown(self.key_file, -1, SERVER_GID)  # as the README says to
        else:
            self.key_file.chmod(0o444)  # a user cannot give the file to group 1000: readable by all then

    def process_environment(self) -> dict[str, str]:
        """This process's environment without what would override the host's .env (as in Compose)."""
        inherited = {key: value for key, value in os.environ.items() if key not in COMPOSE_KEYS}
        return {**inherited, **self.environ}

    def doctor(self, *args: str) -> tuple[int, dict[str, list[dict]]]:
        done = subprocess.run([sys.executable, "-m", "scripts", "doctor", "--env-file", str(self.env_file),
                               "--admin-key-file", str(self.key_file), "--json", *args],
                              capture_output=True, text=True, cwd=PROJECT, env=self.process_environment(), timeout=120)
        assert done.returncode in (0, 1), done.stderr
        checks: dict[str, list[dict]] = {}
        for check in json.loads(done.stdout):
            assert set(check) == {"check", "status", "detail", "fix"}
            assert check["status"] == "ok" or check["fix"], f"a {check['status']} without a fix: {check}"
            checks.setdefault(check["check"], []).append(check)
        return done.returncode, checks


def status(checks: dict[str, list[dict]], name: str) -> str:
    (check,) = checks[name]
    return check["status"]


def disk_statuses() -> list[str]:
    """What the disk checks must say on this machine (Docker's root does not exist here: "/" stands for it)."""
    from scripts.doctor import BUILD_SPACE_GB, DOCKER_SPACE_GB

    return ["ok" if shutil.disk_usage(place).free / 1e9 >= needed else "fail"
            for place, needed in ((Path("/"), DOCKER_SPACE_GB), (PROJECT, BUILD_SPACE_GB))]


def test_a_ready_gpu_box_passes(tmp_path):
    code, checks = Host(tmp_path).doctor()
    failed = {name: found for name, found in checks.items() if any(c["status"] == "fail" for c in found) and name != "disk"}
    assert code == (0 if "fail" not in disk_statuses() else 1) and not failed, failed
    assert "Docker Engine 28.2.2" in checks["docker-engine"][0]["detail"]
    assert "Compose v5.1.1" in checks["docker-compose"][0]["detail"]
    assert "nvidia runtime" in checks["nvidia-container-toolkit"][0]["detail"]
    assert "driver 580.173.02" in checks["nvidia-driver"][0]["detail"]
    assert "NVIDIA L40S, compute capability 8.9, 45000 of 46068 MiB free" in checks["gpu"][0]["detail"]
    assert status(checks, "ngc-release") == status(checks, "security") == "ok"
    assert status(checks, "admin-key") == ("ok" if os.geteuid() == 0 else "warn")
    assert [c["status"] for c in checks["disk"]] == disk_statuses(), checks["disk"]
    assert [name for name in checks if name.startswith("port-")] == ["port-http", "port-grpc", "port-metrics"]


def test_a_driver_older_than_the_release_needs_fails_with_the_driver_to_install(tmp_path):
    code, checks = Host(tmp_path, gpus=(RTX4090_R570,)).doctor()
    minimum = releases.RELEASES[PINNED].min_driver
    (driver,) = checks["nvidia-driver"]
    assert code == 1 and driver["status"] == "fail"
    assert f"driver 570.195.03, below {minimum}" in driver["detail"] and f"NGC {PINNED}" in driver["detail"]
    assert f"install driver {minimum} or later" in driver["fix"]
    assert status(checks, "gpu") == "ok"  # the GPU itself is fine: only the driver is named


def test_a_docker_without_the_nvidia_runtime_fails_with_the_toolkit_setup(tmp_path):
    code, checks = Host(tmp_path, docker=NO_TOOLKIT).doctor()
    (toolkit,) = checks["nvidia-container-toolkit"]
    assert code == 1 and toolkit["status"] == "fail"
    assert "io.containerd.runc.v2, io.containerd.runtime.v1.linux, runc" in toolkit["detail"]
    assert "nvidia-ctk runtime configure --runtime=docker" in toolkit["fix"]
    assert status(checks, "docker-engine") == status(checks, "nvidia-driver") == "ok"


def test_this_machine_no_engine_and_no_gpu_fails_clearly(tmp_path):
    """The recorded state of the development machines: a Docker CLI, no engine, no Compose plugin, no driver."""
    code, checks = Host(tmp_path, docker=ENGINE_DOWN, gpus=()).doctor()
    assert code == 1
    engine, compose, toolkit, driver = (checks[name][0] for name in
                                        ("docker-engine", "docker-compose", "nvidia-container-toolkit", "nvidia-driver"))
    assert engine["status"] == "fail" and "Cannot connect to the Docker daemon" in engine["detail"]
    assert "systemctl start docker" in engine["fix"]
    assert compose["status"] == "fail" and "docker-compose-plugin" in compose["fix"]
    assert toolkit["status"] == "fail" and "not checked" in toolkit["detail"]
    assert driver["status"] == "fail" and "nvidia-smi: command not found" in driver["detail"]
    assert "gpu" not in checks
    assert status(checks, "model-repository") == "ok"  # what can be checked still is


def test_a_pinned_release_with_known_cves_warns_and_names_the_release_to_move_to(tmp_path):
    code, checks = Host(tmp_path, NGC_RELEASE="25.10", DALI_VERSION="1.51.2").doctor()
    (security,) = checks["security"]
    assert code == 0 and security["status"] == "warn", security  # a warning: the box still runs
    assert "CVE-2026-16497" in security["detail"] and "5875" in security["detail"]
    assert f"move NGC_RELEASE to {releases.first_clear_release()}" in security["fix"]
    (dali,) = checks["dali-version"]
    assert dali["status"] == "warn" and "no longer read" in dali["detail"] and "delete the DALI_VERSION line" in dali["fix"]
    assert "driver 580.173.02 (at least 580.95.05" in checks["nvidia-driver"][0]["detail"]  # 25.10's own minimum


def test_an_unknown_release_is_a_warning_that_lists_the_known_ones(tmp_path):
    code, checks = Host(tmp_path, NGC_RELEASE="24.01").doctor()
    (release,) = checks["ngc-release"]
    assert release["status"] == "warn" and all(ngc in release["fix"] for ngc in releases.RELEASES)
    assert "security" not in checks


def test_settings_that_would_break_compose_up_fail_with_their_fix(tmp_path):
    host = Host(tmp_path, BUILDER_USER="4242:4242")
    mode = host.key_file.stat().st_mode
    host.key_file.chmod(0o600)
    host.key_file.write_text("k" * (ADMIN_KEY_MIN_LENGTH - 1))
    host.key_file.chmod(mode)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(host.settings["TRITON_GRPC_PORT"])))
        taken.listen()
        code, checks = host.doctor()
    assert code == 1
    (builder,) = checks["builder-user"]
    owner = PROJECT.stat()
    assert builder["status"] == "fail"
    assert f"sed -i 's/^BUILDER_USER=.*/BUILDER_USER={owner.st_uid}:{owner.st_gid}/'" in builder["fix"]
    (port,) = checks["port-grpc"]
    assert port["status"] == "fail" and host.settings["TRITON_GRPC_PORT"] in port["detail"] and "TRITON_GRPC_PORT" in port["fix"]
    assert status(checks, "port-http") == "ok"
    (key,) = checks["admin-key"]
    assert key["status"] == "fail" and f"fewer than {ADMIN_KEY_MIN_LENGTH}" in key["detail"] and "openssl rand" in key["fix"]


def test_a_key_the_server_user_cannot_read_fails(tmp_path):
    host = Host(tmp_path)
    host.key_file.chmod(0o400)  # this user's alone (a root's file, or another user's: not uid 1000)
    _, checks = host.doctor()
    (key,) = checks["admin-key"]
    assert key["status"] == "fail" and "not readable by uid 1000" in key["detail"] and "chmod 0440" in key["fix"]


def test_gpus_that_do_not_report_everything_or_lack_memory_are_warnings(tmp_path):
    """nvidia-smi prints [N/A] for what a GPU or driver does not report (free memory of a MIG-partitioned
    GPU, for one); a GPU busy with something else keeps too little free memory."""
    busy = json.loads(L40S_R580.read_text()) | {"memory.free": "900"}
    partitioned = json.loads(L40S_R580.read_text()) | {"memory.free": "[N/A]", "memory.total": "[N/A]"}
    files = []
    for name, gpu in (("busy", busy), ("partitioned", partitioned)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(gpu))
    (tmp_path / "box").mkdir()
    code, checks = Host(tmp_path / "box", gpus=tuple(files)).doctor()
    first, second = checks["gpu"]
    assert first["status"] == "warn" and "900 of 46068 MiB free" in first["detail"] and "2048 MiB" in first["fix"]
    assert second["status"] == "warn" and "free memory not reported" in second["detail"]
    assert status(checks, "nvidia-driver") == "ok"


def test_env_file_mistakes_fail_instead_of_crashing(tmp_path):
    host = Host(tmp_path, NGC_RELEASE="", TRITON_HTTP_PORT="80000")
    code, checks = host.doctor()
    assert code == 1
    (release,) = checks["ngc-release"]
    assert release["status"] == "fail" and "refuses to start" in release["detail"]
    assert f"NGC_RELEASE={releases.first_clear_release()}" in release["fix"]
    (ports,) = checks["ports"]
    assert ports["status"] == "fail" and "TRITON_HTTP_PORT='80000' is not a port number" in ports["detail"]
    host.env_file.unlink()
    _, checks = host.doctor()
    assert status(checks, "env-file") == "fail"


def test_the_env_file_is_read_as_compose_reads_it(tmp_path, monkeypatch):
    """Inline comments end an unquoted value; a shell variable overrides the file, as Compose does."""
    from scripts.doctor import compose_settings

    env = tmp_path / ".env"
    env.write_text(f"NGC_RELEASE={PINNED}  # the pin\nBUILDER_USER='1:2'\nTRITON_GRPC_PORT=9001\nA=\"x # y\"\n")
    monkeypatch.setenv("TRITON_GRPC_PORT", "9101")
    monkeypatch.setenv("TRITON_HTTP_PORT", "9100")
    assert compose_settings(env) == {"NGC_RELEASE": PINNED, "BUILDER_USER": "1:2", "TRITON_GRPC_PORT": "9101",
                                     "A": "x # y", "TRITON_HTTP_PORT": "9100"}


def test_a_missing_key_fails(tmp_path):
    host = Host(tmp_path)
    host.key_file.unlink()
    _, checks = host.doctor()
    assert status(checks, "admin-key") == "fail" and "does not exist" in checks["admin-key"][0]["detail"]


def test_the_text_report_and_the_usage_exit_code(tmp_path):
    host = Host(tmp_path, gpus=(RTX4090_R570,))
    done = subprocess.run([sys.executable, "-m", "scripts", "doctor", "--env-file", str(host.env_file), "--admin-key-file",
                           str(host.key_file)], capture_output=True, text=True, cwd=PROJECT,
                          env=host.process_environment(), timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 1 and lines[-1].startswith("doctor: ") and "1 failed" in lines[-1]
    failing = next(i for i, line in enumerate(lines) if line.startswith("fail  nvidia-driver"))
    assert lines[failing + 1].strip().startswith("fix: install driver")
    usage = subprocess.run([sys.executable, "-m", "scripts", "doctor", "--no-such-option"], capture_output=True, text=True,
                           cwd=PROJECT, timeout=60)
    assert usage.returncode == 2


def test_the_pinned_release_is_known_and_clear_of_every_known_bulletin():
    assert PINNED in releases.RELEASES
    assert releases.affecting(PINNED) == [], "move NGC_RELEASE in .env (make doctor says where to)"


# The README's columns: the local and cpu flavors' server (the nvidia-pytriton wheel's), the old pin, the pin.
README_RELEASES = ("24.10", "25.10", PINNED)


def bulletin_rows() -> list[str]:
    return [f"| {b.id} | {b.published} | {', '.join(b.cves)} | {b.summary} | {b.fixed_in} | "
            + " | ".join("yes" if b.affects(ngc) else "no" for ngc in README_RELEASES) + " |" for b in releases.BULLETINS]


def test_the_readme_lists_the_bulletins_of_releases_py_and_the_pinned_release():
    readme = (PROJECT / "README.md").read_text()
    table = readme[readme.index("<!-- bulletins: generated from scripts/releases.py -->"):readme.index("<!-- /bulletins -->")]
    header = table.splitlines()[1]
    assert header.endswith(" | ".join(f"affects {ngc}" for ngc in README_RELEASES) + " |"), header
    assert table.splitlines()[3:] == bulletin_rows(), "regenerate the table: tests/test_doctor.py bulletin_rows()"
    assert f"| NGC {PINNED} (pinned) |" in readme and f"the pin is **{PINNED}**" in readme


def test_the_readme_version_table_is_the_pinned_row_of_releases_py():
    readme = (PROJECT / "README.md").read_text()
    table = readme[readme.index(f"| | NGC {PINNED} (pinned) | source |"):].split("\n\n")[0]
    cells = {line.split("|")[1].strip(): line.split("|")[2] for line in table.splitlines()[2:]}
    row = releases.RELEASES[PINNED]
    assert row.triton in cells["Triton"] and row.cuda in cells["CUDA"] and f"**{row.min_driver}**" in cells["minimum driver"]
    assert f"compute capability {releases.MIN_COMPUTE_CAPABILITY} and later" in cells["GPUs"]
