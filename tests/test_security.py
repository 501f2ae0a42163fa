"""Security checks against the real server: the admin key guards every restricted API over both
protocols, and the key stays out of what the project writes and of every command line but one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client.defaults import admin_header
from scripts import process_stats, releases, tritonserver
from scripts.config import load_bundle
from scripts.constants import ALLOW_KNOWN_CVES_ENV, CPU, LOCAL, TLS_CA, TLS_CERT, TLS_KEY
from scripts.doctor import read_env_file
from scripts.layout import PROJECT
from scripts.serve import RESTRICTED_APIS, GrpcTls, exposure_refusal, free_ports, local_server

# One call of each restricted API group (Triton's --http-restricted-api / --grpc-restricted-protocol names).
CALLS = {
    "model-repository": lambda client, model, headers: client.get_model_repository_index(headers=headers),
    "model-config": lambda client, model, headers: client.get_model_config(model, headers=headers),
    "statistics": lambda client, model, headers: client.get_inference_statistics(model, headers=headers),
    "logging": lambda client, model, headers: client.get_log_settings(headers=headers),
    "trace": lambda client, model, headers: client.get_trace_settings(headers=headers),
    "shared-memory": lambda client, model, headers: client.get_system_shared_memory_status(headers=headers),
}
MODULES = {"http": httpclient, "grpc": grpcclient}


def test_every_restricted_api_is_covered():
    assert set(CALLS) == set(RESTRICTED_APIS)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("api", sorted(CALLS))
def test_a_restricted_api_refuses_no_key_and_a_wrong_key_and_answers_the_key(server, bundle, protocol, api):
    url = server.http_url if protocol == "http" else server.grpc_url
    header = admin_header(protocol)
    call = CALLS[api]
    with MODULES[protocol].InferenceServerClient(url) as client:
        for headers in ({}, {header: "wrong-" + server.admin_key}, {header: server.admin_key[:-1]}):
            with pytest.raises(InferenceServerException) as refused:
                call(client, bundle.ensemble.name, headers)
            assert "restricted" in refused.value.message(), refused.value.message()
        assert call(client, bundle.ensemble.name, {header: server.admin_key}) is not None
        assert client.is_model_ready(bundle.ensemble.name)  # inference and health stay open


def test_the_key_is_on_one_command_line_only_and_in_no_log(server):
    """Triton takes the key only as a command-line option (--http-restricted-api=...:admin-key=<key>): on
    a shared host, other users can read it in `ps`. No other process of the server carries it (the python
    backend's stubs), and the server's log does not hold it."""
    key = server.admin_key.encode()
    tree = process_stats.tree(server.process.pid)
    assert len(tree) > 1, "the python backend's stubs run as the server's children"
    command_lines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tree}
    assert [pid for pid, line in command_lines.items() if key in line] == [server.process.pid]
    assert key not in server.log_path.read_bytes()


def test_the_local_servers_version_is_the_one_the_cve_guard_checks(server):
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.get_server_metadata()["version"] == tritonserver.SERVER_VERSION
    release = releases.of_triton(tritonserver.SERVER_VERSION)
    assert release is not None and releases.affecting(release.ngc)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_a_server_with_known_cves_may_listen_on_loopback(address, monkeypatch):
    monkeypatch.delenv(ALLOW_KNOWN_CVES_ENV, raising=False)
    assert exposure_refusal(address) is None


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "10.1.2.3", "gpu-box.internal"])
def test_a_server_with_known_cves_is_refused_elsewhere_unless_the_user_accepts_the_risk(address, monkeypatch):
    monkeypatch.delenv(ALLOW_KNOWN_CVES_ENV, raising=False)
    refusal = exposure_refusal(address)
    assert refusal and "CVE" in refusal and ALLOW_KNOWN_CVES_ENV in refusal and "remote code execution" in refusal
    monkeypatch.setenv(ALLOW_KNOWN_CVES_ENV, "1")
    assert exposure_refusal(address) is None


def test_make_serve_refuses_a_non_loopback_address_and_says_how_to_override(built):
    (http, grpc, metrics) = free_ports(3)
    env = {key: value for key, value in os.environ.items() if key != ALLOW_KNOWN_CVES_ENV}
    done = subprocess.run([sys.executable, "-m", "scripts", "serve"], capture_output=True, text=True, cwd=PROJECT, timeout=120,
                          env={**env, "TRITON_ADDRESS": "0.0.0.0", "TRITON_HTTP_PORT": str(http),
                               "TRITON_GRPC_PORT": str(grpc), "TRITON_METRICS_PORT": str(metrics)})
    assert done.returncode == 1 and "refusing to serve tritonserver" in done.stderr and ALLOW_KNOWN_CVES_ENV in done.stderr


def chunked_flood(url: str, chunks: int) -> None:
    """One unauthenticated HTTP request whose body comes in `chunks` chunks of one byte each (what
    CVE-2025-23310/23311 describe: the HTTP server's chunked-request handler overflows its stack)."""
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"POST /v2/models/image_classifier/infer HTTP/1.1\r\nHost: x\r\n"
                           b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
        block = b"1\r\nA\r\n" * 100_000
        try:
            for _ in range(chunks // 100_000):
                connection.sendall(block)
            connection.sendall(b"0\r\n\r\n")
            connection.recv(1024)
        except OSError:  # the server is gone in mid-request
            pass


@pytest.mark.parametrize("flavor", [LOCAL, CPU])
def test_what_a_chunked_request_does_to_each_server_run_here(request, flavor, tmp_path):
    """Both flavors that run here run the nvidia-pytriton wheel's tritonserver (2.51, NGC 24.10): one
    request of 3.6 million one-byte chunks kills it. The gpu flavor's release has the fix (bulletin 5687,
    25.07). This test fails the day the wheel's server survives: then the README's Security section and
    the CVE guard of `make serve` need a new look."""
    layout = request.getfixturevalue("built" if flavor == LOCAL else "triton_backends")
    with local_server(layout, layout.flavor(flavor), log_path=tmp_path / "server.log") as victim:
        with httpclient.InferenceServerClient(victim.http_url) as client:
            assert client.is_server_ready()
        chunked_flood(victim.http_url, 3_600_000)
        try:
            victim.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tritonserver {tritonserver.SERVER_VERSION} survived the chunked request: update README "
                        "'Security' and the CVE guard")
        assert victim.process.returncode != 0
        print(f"{flavor}: tritonserver {tritonserver.SERVER_VERSION} died with code {victim.process.returncode}")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA."""
    folder = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
            "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.crt"))
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(folder / f"{name}.key"),
                "-out", str(folder / f"{name}.csr"))
        (folder / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", str(folder / f"{name}.csr"), "-CA", str(folder / "ca.crt"), "-CAkey",
                str(folder / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(folder / f"{name}.ext"),
                "-out", str(folder / f"{name}.crt"))
    return folder


def tls_dir(certificates, target: Path, mutual: bool) -> Path:
    target.mkdir()
    for name in (TLS_CERT, TLS_KEY) + ((TLS_CA,) if mutual else ()):
        source = {TLS_CERT: "server.crt", TLS_KEY: "server.key", TLS_CA: "ca.crt"}[name]
        shutil.copy(certificates / source, target / name)
    return target


@pytest.mark.parametrize("mutual", [False, True], ids=["server-tls", "mutual-tls"])
def test_grpc_over_tls_with_certificates_the_test_makes(built, certificates, tmp_path, mutual):
    """The server's gRPC speaks only TLS; the project's client connects with its Tls settings, and with
    mutual TLS only when it presents a certificate the CA signed."""
    from client import ImageClassifierClient, Tls
    from client.errors import ClientError

    grpc_tls = GrpcTls.from_dir(tls_dir(certificates, tmp_path / "tls", mutual))
    assert (grpc_tls.ca is not None) == mutual
    sample = load_bundle(built.repository).warmup_images[0]
    trusted = Tls(ca_certs=str(certificates / "ca.crt"))
    with_client_cert = Tls(str(certificates / "ca.crt"), str(certificates / "client.crt"), str(certificates / "client.key"))
    with local_server(built, log_path=tmp_path / "server.log", grpc_tls=grpc_tls) as secured:
        for tls in (with_client_cert, *(() if mutual else (trusted,))):
            with ImageClassifierClient(secured.grpc_url, tls=tls, retries=0) as classifier:
                (result,) = classifier.classify([sample], top_k=1)
            assert result.ok, result.error
        for refused in (None, *((trusted,) if mutual else ())):
            with ImageClassifierClient(secured.grpc_url, tls=refused, retries=0, timeout=5) as classifier:
                with pytest.raises(ClientError):
                    classifier.health()
        with httpclient.InferenceServerClient(secured.http_url) as plain_http:
            assert plain_http.is_server_ready()  # only gRPC is TLS


def test_the_readme_counts_the_known_cves_of_each_server():
    readme = (PROJECT / "README.md").read_text()
    section = readme[readme.index("## Security"):readme.index("## Local flavor notes")]
    wheel = releases.of_triton(tritonserver.SERVER_VERSION)
    assert f"`tritonserver` {tritonserver.SERVER_VERSION} inside the `nvidia-pytriton` {tritonserver.WHEEL_VERSION}" in section
    assert f"| {sum(len(b.cves) for b in releases.affecting(wheel.ngc))} CVEs of bulletins" in section
    pinned = read_env_file(PROJECT / ".env")["NGC_RELEASE"]
    assert f"`tritonserver:{pinned}-py3` (Triton {releases.RELEASES[pinned].triton})" in section
    assert not releases.affecting(pinned)
