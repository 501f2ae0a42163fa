"""One client, several servers: requests spread over them, a killed server costs no image, and once it is
back the same client sends it traffic again. Two real local tritonservers; one is SIGKILLed mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import tritonclient.http as httpclient

from client import ImageClassifierClient
from client.endpoints import EndpointPool, parse_urls
from scripts.config import load_bundle
from scripts.serve import local_server
from tests.conftest import REPOSITORY

pytestmark = pytest.mark.integration


def served(server) -> int:
    """Requests the server's ensemble has answered since it started (statistics API, an admin API)."""
    ensemble = load_bundle(REPOSITORY).ensemble.name
    with httpclient.InferenceServerClient(server.http_url) as client:
        stats = client.get_inference_statistics(ensemble, headers=server.admin_headers)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def kill(server) -> None:
    server.process.kill()
    server.process.wait()
    server.stop()  # reaps the python stubs and the shared memory the kill left


def kill_when(server, requests: int) -> threading.Thread:
    """Kill `server` once it has answered `requests` requests (from another thread)."""
    def watch():
        deadline = time.monotonic() + 120
        while served(server) < requests and time.monotonic() < deadline:
            time.sleep(0.05)
        kill(server)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


@pytest.fixture
def two_servers(built, tmp_path):
    servers = [local_server(built, log_path=tmp_path / f"server-{n}.log") for n in range(2)]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_the_cli_classifies_every_image_while_a_server_is_killed(two_servers, heldout):
    first, second = two_servers
    files = [str(path) for _, path in heldout][:300]
    command = [sys.executable, "-m", "client", "classify", *files, "--url", f"{first.grpc_url},{second.grpc_url}",
               "--json", "--top-k", "1", "--concurrency", "4"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = kill_when(second, 40)
    out, err = run.communicate(timeout=300)
    killer.join()
    results = json.loads(out)["results"]
    print(f"{len(results)} images; the first server answered {served(first)} requests")
    assert run.returncode == 0, err
    assert len(results) == len(files) and all(r["ok"] for r in results)
    assert served(first) < len(files), "the second server answered a share before it was killed"


def test_the_same_client_fails_over_then_sends_the_restarted_server_traffic_again(two_servers, heldout):
    first, second = two_servers
    images = [path.read_bytes() for _, path in heldout][:60]
    with ImageClassifierClient([first.grpc_url, second.grpc_url], concurrency=4) as client:
        before = client.classify(images, top_k=1)
        assert all(r.ok for r in before) and served(first) > 0 and served(second) > 0, "requests spread over both"
        kill(second)
        during = client.classify(images, top_k=1)
        assert all(r.ok for r in during), [r.error for r in during if not r.ok][:3]
        assert second.grpc_url in client.endpoints.ejected()
        second.start()
        second.wait_ready()
        deadline = time.monotonic() + 90
        while served(second) == 0 and time.monotonic() < deadline:
            assert all(r.ok for r in client.classify(images[:8], top_k=1))
        print(f"the restarted server answered {served(second)} requests; ejected now: {client.endpoints.ejected()}")
        assert served(second) > 0, "the restarted server was probed back into the rotation"


def test_the_pool_ejects_with_a_growing_backoff_and_brings_a_server_back():
    pool = EndpointPool(parse_urls("a:1, b:2,a:1"), ejection=0.2, max_ejection=0.8)
    assert pool.urls == ("a:1", "b:2")
    assert {pool.pick() for _ in range(4)} == {"a:1", "b:2"}, "round-robin over both"
    pool.failed("b:2")
    assert {pool.pick() for _ in range(4)} == {"a:1"} and pool.ejected() == ["b:2"]
    assert pool.pick(avoid=["a:1"]) == "b:2", "with no other choice, the one whose ejection ends first"
    time.sleep(0.25)
    assert "b:2" in {pool.pick() for _ in range(4)}, "probed again once its ejection is over"
    pool.failed("b:2")
    pool.failed("b:2")  # a third failure in a row: 0.8 s (capped), not 0.2
    time.sleep(0.3)
    assert pool.ejected() == ["b:2"]
    pool.succeeded("b:2")
    assert pool.ejected() == [] and not pool.others_ready("a:1", avoid=["b:2"])
    with pytest.raises(ValueError, match="no server address"):
        parse_urls(" , ")


def test_the_async_client_fails_over_from_a_server_that_is_not_there(server, heldout):
    import asyncio

    from client import AsyncImageClassifierClient
    from scripts.serve import free_ports

    nowhere = f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    images = [path.read_bytes() for _, path in heldout][:20]

    async def run():
        async with AsyncImageClassifierClient([nowhere, server.grpc_url], concurrency=4) as client:
            results = await client.classify(images, top_k=1)
            return results, client.endpoints.ejected()

    results, ejected = asyncio.run(run())
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert ejected == [nowhere]


def test_locust_users_share_the_servers_out(two_servers, tmp_path):
    from scripts.layout import PROJECT

    first, second = two_servers
    command = [sys.executable, "-m", "locust", "--config", str(PROJECT / "loadtest" / "locust.conf"), "--run-time", "5s",
               "-u", "4", "-r", "4", "--csv", str(tmp_path / "run"), "--metrics-url", "", "GrpcUser",
               "--triton-grpc", f"{first.grpc_url},{second.grpc_url}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    print(f"first {served(first)}, second {served(second)} requests")
    assert served(first) > 10 and served(second) > 10, "each server got its share of the users"


def test_a_dns_target_is_resolved_and_balanced_by_grpc(server, heldout):
    """dns:///name:port, the headless Service's form: gRPC resolves the name itself (here one address)."""
    port = server.grpc_url.rsplit(":", 1)[1]
    images = [path.read_bytes() for _, path in heldout][:8]
    with ImageClassifierClient(f"dns:///localhost:{port}") as client:
        assert all(r.ok for r in client.classify(images, top_k=1))
        assert client.urls == (f"dns:///localhost:{port}",)
