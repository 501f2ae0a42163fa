"""The client library and CLI: input checks and error mapping offline, everything else against the real server."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from geventhttpclient.response import HTTPConnectionClosed
from PIL import Image
from tritonclient.utils import InferenceServerException

from client import (
    AsyncImageClassifierClient,
    ImageClassifierClient,
    InferenceError,
    InvalidImage,
    Limits,
    ModelNotReady,
    RetryPolicy,
    ServerUnavailable,
)
from client.api import parse_prediction, to_client_error
from client.image_formats import UNDECODABLE, refusal
from client.images import prepare
from scripts import process_stats
from scripts.demo import MIN_DEMO_ACCURACY
from scripts.layout import PROJECT
from scripts.serve import free_endpoint, free_ports, local_server


def encode(fmt: str, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, fmt)
    return buffer.getvalue()


# -- offline ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "name"), [("JPEG", "JPEG"), ("PNG", "PNG"), ("BMP", "BMP"), ("TIFF", "TIFF"), ("WEBP", "WebP")])
def test_formats_are_recognized_with_their_size_from_the_header(fmt, name):
    image = prepare(encode(fmt, (40, 30)))
    assert (image.format, image.width, image.height) == (name, 40, 30)


@pytest.mark.parametrize(("data", "limits", "reason"), [
    (b"", Limits(), "the image is empty"),
    (b"hello world, not an image", Limits(), "not a supported image format (first bytes: 68 65 6c"),
    (encode("GIF"), Limits(), "GIF is not supported"),
    (b"\xff\xd8\xff\xe0" + bytes(12), Limits(), "JPEG header is unreadable"),
    (encode("PNG"), Limits(max_bytes=10), "bytes is over the limit of 10 bytes"),
    (encode("PNG", (400, 300)), Limits(max_pixels=100_000), "400x300 = 120000 pixels is over the limit of 100000"),
], ids=["empty", "unknown", "gif", "truncated-header", "too-many-bytes", "too-many-pixels"])
def test_bad_input_is_refused_before_sending_with_the_reason(data, limits, reason):
    with pytest.raises(InvalidImage) as caught:
        prepare(data, 3, limits)
    assert reason in str(caught.value) and caught.value.source == "<image #3>"


def test_files_are_named_in_errors(tmp_path):
    with pytest.raises(InvalidImage, match=r"missing\.jpg: no such file"):
        prepare(tmp_path / "missing.jpg")
    with pytest.raises(InvalidImage, match="is a directory"):
        prepare(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with open(text) as handle, pytest.raises(InvalidImage, match="binary mode"):
        prepare(handle)
    with open(text, "rb") as handle, pytest.raises(InvalidImage, match=r"notes\.txt: not a supported image format"):
        prepare(handle)


@pytest.mark.parametrize(("status", "message", "kind"), [
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServerUnavailable),
    ("503", "Service Unavailable", ServerUnavailable),
    ("429", "Too Many Requests", ServerUnavailable),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'x' is not found", ModelNotReady),
    ("400", "Request for unknown model: 'x' is not found", ModelNotReady),
    ("StatusCode.INVALID_ARGUMENT", refusal("IMAGE", 0, "..."), InvalidImage),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", InferenceError),
    ("StatusCode.INTERNAL", "something broke", InferenceError),
    ("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'", InferenceError),
    ("403", "This API is restricted, expecting header 'admin-key'", InferenceError),
])
def test_failures_map_to_the_client_exceptions(status, message, kind):
    error = to_client_error(InferenceServerException(message, status=status), "host:1", 5.0)
    assert type(error) is kind
    assert error.transient == (kind is ServerUnavailable)


def test_socket_errors_mean_the_server_is_unavailable():
    assert isinstance(to_client_error(ConnectionRefusedError(111, "Connection refused"), "host:1", 5.0), ServerUnavailable)
    # What tritonclient's HTTP client raises when the server dies under a request.
    assert isinstance(to_client_error(HTTPConnectionClosed("connection closed."), "host:1", 5.0), ServerUnavailable)
    assert isinstance(to_client_error(TimeoutError(), "host:1", 5.0), InferenceError)


def test_retries_only_transient_failures_with_growing_jittered_backoff():
    policy = RetryPolicy(retries=4, backoff=0.1, max_backoff=0.3)
    far = time.monotonic() + 60
    unavailable = ServerUnavailable("down")
    delays = [policy.delay(unavailable, attempt, far) for attempt in range(5)]
    assert delays[4] is None
    for attempt, delay in enumerate(delays[:4]):
        cap = min(0.3, 0.1 * 2 ** attempt)
        assert cap / 2 <= delay <= cap
    assert policy.delay(InvalidImage("bad"), 0, far) is None
    assert policy.delay(unavailable, 0, time.monotonic() + 0.01) is None  # would overrun the timeout


def test_labels_may_contain_colons():
    prediction = parse_prediction(b"0.75:3:sign: stop")
    assert (prediction.label, prediction.index, prediction.score) == ("sign: stop", 3, 0.75)


# -- against the real local server -----------------------------------------------------------------
def url_of(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


def run_async(coroutine):
    return asyncio.run(coroutine)


async def classify_async(url, protocol, images, **options):
    async with AsyncImageClassifierClient(url, protocol=protocol, **options) as classifier:
        return await classifier.classify(images, top_k=2)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_classify_sync_and_async_over_both_protocols(server, heldout, protocol, mode):
    picks = heldout[::15]
    images = [path for _, path in picks]
    if mode == "sync":
        with ImageClassifierClient(url_of(server, protocol), protocol=protocol, concurrency=4) as classifier:
            results = classifier.classify(images, top_k=2)
    else:
        results = run_async(classify_async(url_of(server, protocol), protocol, images, concurrency=4))
    assert [r.source for r in results] == [str(p) for p in images]
    assert all(r.ok and len(r.predictions) == 2 for r in results)
    accuracy = np.mean([r.top.label == label for r, (label, _) in zip(results, picks, strict=True)])
    assert accuracy >= MIN_DEMO_ACCURACY


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_long_lived_client_reuses_its_connections(server, heldout, protocol):
    """An application keeps one client for hours: calls must not each leave a connection open on the server."""
    images = [path for _, path in heldout[:2]]
    with ImageClassifierClient(url_of(server, protocol), protocol=protocol, concurrency=2) as classifier:
        classifier.classify(images)
        before = process_stats.sample(server.process.pid).open_fds
        for _ in range(100):
            assert all(result.ok for result in classifier.classify(images))
        after = process_stats.sample(server.process.pid).open_fds
    print(f"{protocol}: server's open files {before} before and {after} after 100 calls of one client")
    assert after - before <= 2


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_several_images_per_request_give_the_same_results(server, heldout, mode):
    images = [path for _, path in heldout[::30]]
    with ImageClassifierClient(server.grpc_url) as classifier:
        alone = classifier.classify(images, top_k=2)
    if mode == "sync":
        with ImageClassifierClient(server.grpc_url, images_per_request=4) as classifier:
            packed = classifier.classify(images, top_k=2)
    else:
        packed = run_async(classify_async(server.grpc_url, "grpc", images, images_per_request=4))
    assert [[p.label for p in r.predictions] for r in packed] == [[p.label for p in r.predictions] for r in alone]
    assert np.allclose([r.top.score for r in packed], [r.top.score for r in alone], atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_images_per_request_is_capped_by_the_models_max_batch_size(server, bundle, protocol):
    url = url_of(server, protocol)
    with ImageClassifierClient(url, protocol=protocol, admin_key=server.admin_key, images_per_request=1000) as classifier:
        assert classifier.max_batch_size() == bundle.ensemble.max_batch_size
        assert classifier._per_request(classifier.max_batch_size()) == bundle.ensemble.max_batch_size
    with ImageClassifierClient(url, protocol=protocol, images_per_request=8) as classifier:
        assert classifier.max_batch_size() is None  # without the key the server does not tell

    async def read():
        async with AsyncImageClassifierClient(url, protocol=protocol, admin_key=server.admin_key) as classifier:
            return await classifier.max_batch_size()

    assert run_async(read()) == bundle.ensemble.max_batch_size


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_down_is_reported_as_unavailable_within_the_timeout(protocol):
    (port,) = free_ports(1)
    with ImageClassifierClient(f"127.0.0.1:{port}", protocol=protocol, timeout=2.0, retries=10) as classifier:
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="check that"):
            classifier.health()
        assert time.monotonic() - started < 2.5
        started = time.monotonic()
        with pytest.raises(ServerUnavailable):
            classifier.classify_one(encode("PNG"))
        assert time.monotonic() - started < 2.5

    async def down():
        async with AsyncImageClassifierClient(f"127.0.0.1:{port}", protocol=protocol, timeout=2.0, retries=10) as classifier:
            await classifier.classify_one(encode("PNG"))

    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        run_async(down())
    assert time.monotonic() - started < 2.5


@pytest.mark.integration
def test_a_bad_image_alone_is_reported_as_invalid(server, heldout):
    data = heldout[0][1].read_bytes()
    truncated = data[: len(data) // 2]  # the header survives, half the scan data does not
    with ImageClassifierClient(server.grpc_url) as classifier:
        reason = f"{UNDECODABLE}: JPEG image of {len(truncated)} bytes is truncated: no end-of-image marker"
        with pytest.raises(InvalidImage, match=reason):
            classifier.classify_one(truncated)


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_mixed_good_and_bad_images_every_good_one_is_classified(server, heldout, tmp_path, mode):
    good = heldout[:10]
    truncated = tmp_path / "truncated.jpg"
    data = good[0][1].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    not_image = tmp_path / "notes.jpg"
    not_image.write_bytes(b"just text")
    images = ([str(p) for _, p in good[:5]] + [str(truncated)] + [str(p) for _, p in good[5:]]
              + [str(not_image), str(tmp_path / "gone.jpg")])
    # Four images per request: the truncated one shares a request with good ones.
    if mode == "sync":
        with ImageClassifierClient(server.grpc_url, images_per_request=4) as classifier:
            results = classifier.classify(images, top_k=1)
    else:
        results = run_async(classify_async(server.grpc_url, "grpc", images, images_per_request=4))
    by_source = {r.source: r for r in results}
    for label, path in good:
        assert by_source[str(path)].ok and by_source[str(path)].top.label == label
    assert isinstance(by_source[str(truncated)].error, InvalidImage)
    assert UNDECODABLE in str(by_source[str(truncated)].error)
    assert isinstance(by_source[str(not_image)].error, InvalidImage)
    assert "no such file" in str(by_source[str(tmp_path / "gone.jpg")].error)


@pytest.mark.integration
def test_the_client_recovers_from_a_server_restart(built, heldout, tmp_path):
    endpoint = free_endpoint()

    def start():
        return local_server(built, endpoint=endpoint, log_path=tmp_path / "server.log").__enter__()

    server = start()
    images = [path for _, path in heldout] * 2
    progress, results = [], []
    classifier = ImageClassifierClient(endpoint.grpc_url, concurrency=2, timeout=120, retries=30)
    worker = threading.Thread(target=lambda: results.extend(classifier.classify(images, top_k=1, on_result=progress.append)))
    worker.start()
    try:
        while len(progress) < 20:
            time.sleep(0.05)
        killed_at = len(progress)
        crashed = server
        crashed.process.kill()  # a crash: requests in flight fail, new ones find nothing listening
        crashed.stop()
        server = start()
        worker.join(timeout=300)
        assert not worker.is_alive()
    finally:
        classifier.close()
        server.stop()
    assert killed_at < len(images) - 20, "the server died too late to test anything"
    stubs = [p for p in Path("/proc").glob("[0-9]*")
             if (p / "cmdline").exists() and crashed.shm_prefix.encode() in (p / "cmdline").read_bytes()]
    assert not stubs, "the crashed server's python backend stubs were left running"
    failures = [r for r in results if not r.ok]
    assert not failures, failures[:3]
    labels = [label for label, _ in heldout] * 2
    assert np.mean([r.top.label == label for r, label in zip(results, labels, strict=True)]) >= MIN_DEMO_ACCURACY


# -- the CLI ---------------------------------------------------------------------------------------
def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True, text=True, cwd=PROJECT, timeout=timeout)


@pytest.mark.integration
def test_cli_classify_prints_a_table(server, heldout):
    label, path = heldout[0]
    done = cli("classify", str(path), "--url", server.grpc_url, "--top-k", "2")
    assert done.returncode == 0, done.stderr
    header, first, second = done.stdout.splitlines()
    assert header.split() == ["image", "score", "label"]
    assert first.split()[0] == str(path) and first.split()[-1] == label
    assert len(second.split()) == 2


@pytest.mark.integration
def test_cli_json_and_exit_code_when_some_images_fail(server, heldout, tmp_path):
    bad = tmp_path / "broken.jpg"
    data = heldout[0][1].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    done = cli("classify", str(heldout[0][1]), str(bad), "--url", server.http_url, "--protocol", "http", "--json")
    assert done.returncode == 1
    results = {r["source"]: r for r in json.loads(done.stdout)["results"]}
    assert results[str(heldout[0][1])]["ok"] and results[str(heldout[0][1])]["predictions"][0]["label"] == heldout[0][0]
    assert results[str(bad)]["error"]["type"] == "InvalidImage"


@pytest.mark.integration
def test_cli_health_and_models(server):
    health = cli("health", "--url", server.grpc_url, "--json")
    assert health.returncode == 0 and json.loads(health.stdout) == {"live": True, "ready": True, "model_ready": True}
    models = cli("models", "--url", server.http_url, "--protocol", "http", "--json", f"--admin-key={server.admin_key}")
    assert models.returncode == 0, models.stderr
    assert {m["name"]: m["state"] for m in json.loads(models.stdout)} == {
        "classifier": "READY", "image_classifier": "READY", "imagecheck": "READY", "preprocess": "READY"}
    over_grpc = cli("models", "--url", server.grpc_url, "--json", f"--admin-key={server.admin_key}")
    assert over_grpc.returncode == 0 and json.loads(over_grpc.stdout) == json.loads(models.stdout)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        started = time.monotonic()
        refused = cli("models", "--url", url, "--protocol", protocol, "--admin-key=wrong", "--retries", "5")
        assert refused.returncode == 2 and "needs the admin key" in refused.stderr, refused.stderr
        assert time.monotonic() - started < 4, "a refused admin call is not a transient failure to retry"


def test_cli_exit_code_2_when_the_server_is_down(tmp_path):
    (port,) = free_ports(1)
    image = tmp_path / "red.png"
    image.write_bytes(encode("PNG"))
    done = cli("classify", "--url", f"127.0.0.1:{port}", "--timeout", "2", str(image))
    assert done.returncode == 2
    assert "ServerUnavailable" not in done.stderr and "check that" in done.stderr
