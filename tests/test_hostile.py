"""Requests built to hurt, against a real server of its own (the local flavor): each gets a clear error or
a bounded wait, the server stays ready, and its memory comes back."""

from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from client.api import triton_module
from scripts import process_stats
from scripts.serve import local_server

HUGE = 256 * 1024 * 1024  # far over any image (the client refuses images over 32 MB)
LARGE = 64 * 1024 * 1024  # for the memory test: 16 of them
HUGE_ROUNDS = 8  # sequential huge requests per half of the test: more than fill every pool that keeps one
SLOW_CLIENTS = 200
BOUNDED_SECONDS = 5.0


@pytest.fixture(scope="module")
def target(built, bundle, tmp_path_factory):
    with local_server(built, log_path=tmp_path_factory.mktemp("hostile") / "server.log") as server:
        yield server


def healthy(server, bundle) -> bool:
    with httpclient.InferenceServerClient(server.http_url) as client:
        return client.is_server_ready() and all(client.is_model_ready(name) for name in bundle.configs)


def classify(server, bundle, image: bytes, protocol: str = "grpc") -> int:
    module = triton_module(protocol, aio=False)
    with module.InferenceServerClient(server.endpoint.url(protocol)) as client:
        tensor = module.InferInput(bundle.ensemble.input[0].name, [1, len(image)], "UINT8")
        tensor.set_data_from_numpy(np.frombuffer(image, np.uint8).reshape(1, -1))
        return int(np.argmax(client.infer(bundle.ensemble.name, [tensor]).as_numpy(bundle.classifier.output_name)))


def settled(server, seconds: float = 10.0) -> process_stats.Sample:
    """The server's memory once it stops falling (freed memory goes back in steps)."""
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        now = process_stats.sample(server.process.pid)
        if last is not None and now.rss_bytes >= last.rss_bytes:
            return now
        last = now
        time.sleep(1.0)
    return last


def send_huge(server, bundle, protocol: str, count: int, size: int = HUGE) -> None:
    """`count` requests of one `size`-byte "image" (a JPEG signature, then nothing that parses), each refused."""
    huge = np.zeros((1, size), np.uint8)
    huge[0, :4] = np.frombuffer(b"\xff\xd8\xff\xe0", np.uint8)
    module = triton_module(protocol, aio=False)
    with module.InferenceServerClient(server.endpoint.url(protocol)) as client:
        tensor = module.InferInput(bundle.ensemble.input[0].name, list(huge.shape), "UINT8")
        tensor.set_data_from_numpy(huge)
        for _ in range(count):
            with pytest.raises(InferenceServerException) as refused:
                client.infer(bundle.ensemble.name, [tensor])
            assert "cannot be decoded" in refused.value.message()
            assert "no readable pixel size" in refused.value.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_huge_requests_are_refused_with_the_reason_and_the_server_goes_on(target, bundle, heldout, protocol):
    """No image is 256 MB: the image check refuses it, the server stays ready and answers the next request."""
    sample = heldout[0][1].read_bytes()
    send_huge(target, bundle, protocol, 2)
    assert healthy(target, bundle) and classify(target, bundle, sample, protocol) >= 0


def test_huge_http_requests_stop_adding_memory(target, bundle, heldout):
    """The wheel's tritonserver (2.51) cannot cap a request's size (later releases refuse HTTP requests over
    --http-max-input-size), and the python backend keeps, for reuse, the shared memory the largest batch
    of an instance needed: bounded, so that once it is full, more huge requests add nothing. (Over gRPC,
    2.51 keeps more with each few huge requests: docs/reliability.md has the figures.)"""
    sample = heldout[0][1].read_bytes()
    classify(target, bundle, sample, "http")  # every path warm before the baseline
    memory = [settled(target)]
    for _ in range(2):
        send_huge(target, bundle, "http", HUGE_ROUNDS, LARGE)
        memory.append(settled(target))
    mib = [f"{sample.rss_bytes / 2**20:.0f}" for sample in memory]
    print(f"http: server memory {' -> '.join(mib)} MiB (start, after {HUGE_ROUNDS}, after {2 * HUGE_ROUNDS} "
          f"requests of {LARGE >> 20} MiB)")
    assert memory[2].rss_bytes - memory[1].rss_bytes < LARGE / 2, "huge requests keep adding memory"


def http_infer_raw(server, header: dict, body: bytes) -> tuple[int, str]:
    """POST an inference request with Triton's binary-data extension, as built by hand."""
    text = json.dumps(header).encode()
    host, port = server.http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/v2/models/image_classifier/infer", text + body,
                           {"Inference-Header-Content-Length": str(len(text)), "Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def grpc_infer_raw(server, shape: list[int], datatype: str, raw: bytes) -> grpc.RpcError:
    request = service_pb2.ModelInferRequest(model_name="image_classifier")
    request.inputs.add(name="IMAGE", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    with grpc.insecure_channel(server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    return refused.value


MALFORMED = {
    # name: (shape, datatype, bytes sent, what the error says)
    "shape-says-more-than-sent": ([1, 1000], "UINT8", 10,
                                  "byte size mismatch for input 'image' for model 'image_classifier'. expected 1000, got 10"),
    "wrong-data-type": ([1, 4], "FP32", 16, "data-type is 'fp32', but model 'image_classifier' expects 'uint8'"),
    "empty-batch": ([0, 16], "UINT8", 0, "byte size mismatch for input 'image'"),
    "batch-over-max-batch-size": ([33, 16], "UINT8", 33 * 16, "batch-size must be <= 32"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_get_a_clear_error_over_both_protocols(target, bundle, case):
    shape, datatype, size, words = MALFORMED[case]
    header = {"inputs": [{"name": "IMAGE", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}]}
    status, message = http_infer_raw(target, header, bytes(size))
    assert status == 400 and words in message.lower(), (status, message)
    refused = grpc_infer_raw(target, shape, datatype, bytes(size))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and words in refused.details().lower(), refused.details()
    assert healthy(target, bundle)


def test_slow_clients_that_send_nothing_do_not_stop_anyone_else(target, bundle, heldout):
    """SLOW_CLIENTS connections each to the HTTP and the gRPC port: some silent, some with half a request.
    Meanwhile every good request over both protocols is answered within BOUNDED_SECONDS."""
    sample = heldout[0][1].read_bytes()
    host = target.endpoint.host
    idle = []
    for index in range(SLOW_CLIENTS):
        for port in (target.endpoint.http, target.endpoint.grpc):
            connection = socket.create_connection((host, port), timeout=10)
            if index % 2:
                connection.sendall(b"POST /v2/models/image_classifier/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n")
            idle.append(connection)
    try:
        def timed(protocol: str) -> float:
            started = time.monotonic()
            classify(target, bundle, sample, protocol)
            return time.monotonic() - started

        with ThreadPoolExecutor(max_workers=8) as pool:
            waits = list(pool.map(timed, ["grpc", "http"] * 8))
        print(f"with {len(idle)} stalled connections open: slowest good request {max(waits):.2f} s")
        assert max(waits) < BOUNDED_SECONDS
    finally:
        for connection in idle:
            connection.close()
    assert healthy(target, bundle)
