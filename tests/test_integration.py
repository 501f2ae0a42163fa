"""End to end through a real tritonserver (local flavor) started on free ports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client import ImageClassifierClient
from client.defaults import ADMIN_HEADER
from client.image_formats import SUPPORTED_TEXT
from scripts.config import load_bundle, read_config
from scripts.constants import CONFIG_FILENAME, LOCAL
from scripts.demo import MIN_DEMO_ACCURACY
from scripts.layout import PROJECT
from scripts.serve import free_ports
from tests.conftest import REPOSITORY

pytestmark = pytest.mark.integration


def client_for(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return ImageClassifierClient(url, protocol=protocol, model=server_model(server))


def server_model(server):
    from scripts.config import load_bundle

    return load_bundle(REPOSITORY).ensemble.name


def raw_scores(server, bundle, image: bytes) -> np.ndarray:
    """The ensemble's raw score vector for one image, over gRPC."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensor = grpcclient.InferInput(bundle.preprocess.input_name, [1, len(image)], "UINT8")
        tensor.set_data_from_numpy(np.frombuffer(image, np.uint8)[None, :])
        result = client.infer(bundle.ensemble.name, [tensor])
        return result.as_numpy(bundle.classifier.output_name)[0]
    finally:
        client.close()


def batch_executions(server, model: str) -> dict[int, int]:
    """{batch size: executions} from the statistics API (an admin API: needs the key)."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics(model, headers=server.admin_headers)["model_stats"][0]
        return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_heldout_accuracy_through_the_ensemble(any_server, heldout, protocol):
    """Labels come back through the classification extension (class_count), as the client asks for them."""
    with client_for(any_server, protocol) as classifier:
        results = classifier.classify([path for _, path in heldout], top_k=1)
    correct = sum(result.top.label == label for result, (label, _) in zip(results, heldout, strict=True))
    accuracy = correct / len(heldout)
    print(f"{protocol}: top-1 accuracy {accuracy:.3f} on {len(heldout)} held-out images")
    assert accuracy >= MIN_DEMO_ACCURACY


def test_grpc_and_http_return_the_same_predictions(any_server, heldout):
    images = [path for _, path in heldout[::10]]
    with client_for(any_server, "grpc") as grpc_client, client_for(any_server, "http") as http_client:
        over_grpc = grpc_client.classify(images, top_k=3)
        over_http = http_client.classify(images, top_k=3)
    for a, b in zip(over_grpc, over_http, strict=True):
        assert [p.label for p in a.predictions] == [p.label for p in b.predictions]
        assert np.allclose([p.score for p in a.predictions], [p.score for p in b.predictions], atol=1e-6)


def test_concurrent_single_image_requests_are_batched_and_match_unbatched(any_server, bundle, heldout):
    """Each step the flavor configures with dynamic batching merges concurrent requests, and the merged
    results are the unmerged ones (the cpu flavor's DALI step does not batch: see scripts/repository.py)."""
    steps = [bundle.preprocess.model_name, bundle.classifier.model_name]
    configs = {name: read_config(any_server.repository / name / CONFIG_FILENAME) for name in steps}
    batching = [name for name, config in configs.items() if config.HasField("dynamic_batching")]
    assert batching, "no step of this flavor batches"
    images = [path.read_bytes() for _, path in heldout[:48]]
    alone = [raw_scores(any_server, bundle, image) for image in images]
    before = {name: batch_executions(any_server, name) for name in batching}
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(lambda image: raw_scores(any_server, bundle, image), images))
    for name in batching:
        after = batch_executions(any_server, name)
        batched = {size: count - before[name].get(size, 0) for size, count in after.items() if size > 1}
        print(f"{name}: batch executions since the test began: {batched}")
        assert sum(batched.values()) > 0, f"{name}: no execution had more than one request: {after}"
    np.testing.assert_allclose(np.stack(together), np.stack(alone), atol=1e-5)


def test_several_zero_padded_images_in_one_request(any_server, bundle, heldout):
    """Clients may send [N, L] with shorter images zero-padded: each row is classified on its own."""
    picks = heldout[::50]
    images = [path.read_bytes() for _, path in picks]
    padded = np.zeros((len(images), max(map(len, images))), np.uint8)
    for row, image in zip(padded, images, strict=True):
        row[: len(image)] = np.frombuffer(image, np.uint8)
    client = grpcclient.InferenceServerClient(any_server.grpc_url)
    tensor = grpcclient.InferInput(bundle.preprocess.input_name, list(padded.shape), "UINT8")
    tensor.set_data_from_numpy(padded)
    output = grpcclient.InferRequestedOutput(bundle.classifier.output_name, class_count=1)
    result = client.infer(bundle.ensemble.name, [tensor], outputs=[output]).as_numpy(bundle.classifier.output_name)
    assert [entry[0].decode().split(":", 2)[2] for entry in result] == [label for label, _ in picks]


@pytest.mark.parametrize(("data", "reason"), [
    (b"GIF89a" + bytes(32), f"GIF images are not supported (send {SUPPORTED_TEXT})"),
    (b"GIF87a" + bytes(32), "GIF images are not supported"),
    (b"", "the image is empty (0 bytes)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", "PNG image of 16 bytes is truncated: no IEND chunk"),
    # A bare JPEG 2000 codestream: the server names it from the same signature table the client uses.
    (b"\xff\x4f\xff\x51" + bytes(range(1, 29)), "JPEG 2000 image of 32 bytes is corrupt or truncated"),
    (b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(range(1, 13)), "WebP image of 28 bytes has no readable pixel size"),
], ids=["gif89a", "gif87a", "empty", "truncated-png", "j2k-codestream", "truncated-webp"])
def test_bad_image_error_is_an_invalid_argument_with_the_reason(server, bundle, data, reason):
    client = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput(bundle.preprocess.input_name, [1, len(data)], "UINT8")
    tensor.set_data_from_numpy(np.frombuffer(data, np.uint8).reshape(1, len(data)))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(bundle.ensemble.name, [tensor])
    assert caught.value.status() == "400"
    assert reason in caught.value.message()


def test_admin_apis_need_the_key(server, bundle):
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException):
        client.get_inference_statistics(bundle.ensemble.name)
    with pytest.raises(InferenceServerException):
        client.get_model_repository_index()
    assert client.get_model_repository_index(headers=server.admin_headers)


def start_serve_command(preexec=None, **environment):
    """Run `python -m scripts serve` on free ports until it says it is ready: (process, output, http port)."""
    http, grpc, metrics = free_ports(3)
    env = {**os.environ, "TRITON_HTTP_PORT": str(http), "TRITON_GRPC_PORT": str(grpc), "TRITON_METRICS_PORT": str(metrics),
           **environment}
    process = subprocess.Popen([sys.executable, "-m", "scripts", "serve"], cwd=PROJECT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec)
    output = ""
    deadline = time.monotonic() + 180
    while "Ctrl-C stops the server" not in output and time.monotonic() < deadline and process.poll() is None:
        output += process.stdout.readline()
    assert f"127.0.0.1:{grpc}" in output and "-m client classify" in output, output
    assert httpclient.InferenceServerClient(f"127.0.0.1:{http}").is_server_ready()
    return process, output, http


def server_is_gone(http_port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").is_server_ready()
        except Exception:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.parametrize(("signum", "sigint_ignored"), [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["ctrl-c", "sigterm-from-a-background-job"])
def test_serve_command_starts_and_stops_cleanly(built, signum, sigint_ignored):
    """`make serve` prints the endpoints when ready, and stops the server on Ctrl-C or SIGTERM.

    A non-interactive shell starts background jobs with SIGINT ignored: the server must stop anyway.
    """
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    process, _, http = start_serve_command(preexec)
    try:
        process.send_signal(signum)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, rest
        assert "stopped." in rest
        assert server_is_gone(http, timeout=1.0)
    finally:
        if process.poll() is None:
            process.kill()


def test_server_does_not_outlive_a_killed_serve_command(built):
    process, _, http = start_serve_command()
    process.kill()
    process.wait()
    assert server_is_gone(http), "tritonserver kept running after its parent was killed"


def test_diff_shows_how_the_live_configs_differ(server, built, tmp_path):
    from scripts.validate import diff_live

    assert diff_live(built.flavor(LOCAL), server.http_url, server.admin_headers) == []
    edited = tmp_path / "local"
    shutil.copytree(built.flavor(LOCAL), edited)
    config = edited / "preprocess" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_delay_microseconds: 100", "max_queue_delay_microseconds: 2000"))
    shutil.copytree(edited / "preprocess", edited / "resize")
    differences = {(d.model, d.field): (d.committed, d.live) for d in diff_live(edited, server.http_url, server.admin_headers)}
    assert differences[("preprocess", "dynamic_batching.max_queue_delay_microseconds")] == ("2000", "100")
    assert differences[("resize", "(model)")][1].startswith("not served")
    assert len(differences) == 2

    command = [sys.executable, "-m", "scripts", "diff", str(edited), "--url", server.http_url]
    with_key = subprocess.run([*command, f"--admin-key={server.admin_key}"], capture_output=True, text=True, cwd=PROJECT,
                              timeout=60)
    assert with_key.returncode == 1 and "committed 2000, live 100" in with_key.stdout
    without_key = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, timeout=60,
                                 env={k: v for k, v in os.environ.items() if k != "TRITON_ADMIN_KEY"})
    assert without_key.returncode == 2 and "admin-key" in without_key.stderr


def test_serve_command_in_explicit_mode_loads_every_model_and_takes_load_requests(built):
    key = "k" * 32
    process, _, http = start_serve_command(TRITON_MODEL_CONTROL_MODE="explicit", TRITON_ADMIN_KEY=key)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        headers = {ADMIN_HEADER: key}
        assert {m["name"]: m["state"] for m in client.get_model_repository_index(headers=headers)} == {
            name: "READY" for name in load_bundle(REPOSITORY).configs}
        client.load_model(load_bundle(REPOSITORY).classifier.model_name, headers=headers)  # allowed in explicit mode
    finally:
        process.terminate()
        process.communicate(timeout=60)


def test_serve_command_refuses_a_model_control_mode_it_does_not_support(built):
    done = subprocess.run([sys.executable, "-m", "scripts", "serve"], cwd=PROJECT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TRITON_MODEL_CONTROL_MODE": "poll"})
    assert done.returncode == 2 and "TRITON_MODEL_CONTROL_MODE must be one of none, explicit" in done.stderr
