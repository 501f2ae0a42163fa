"""The cpu flavor on Triton's own DALI and ONNX Runtime backends (built by `make backends`), served by
the real tritonserver: what its configs change, warmup, load, bad images, and the upstream fault
those configs work around. Accuracy, both protocols, batching and zero-padded requests run for both
flavors in test_integration.py (the `any_server` fixture)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from scripts import corpus
from scripts.config import model_config_pb2, read_config, write_config
from scripts.constants import CONFIG_FILENAME, CPU, WARMUP_DIR
from scripts.demo import MIN_DEMO_ACCURACY
from scripts.serve import local_server
from scripts.tritonserver import ServerError

pytestmark = pytest.mark.integration


def infer(url: str, bundle, images: list[bytes]):
    """One gRPC request of zero-padded encoded images: the scores, or the server's exception."""
    padded = np.zeros((len(images), max(map(len, images))), np.uint8)
    for row, image in zip(padded, images, strict=True):
        row[: len(image)] = np.frombuffer(image, np.uint8)
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput(bundle.preprocess.input_name, list(padded.shape), "UINT8")
        tensor.set_data_from_numpy(padded)
        return client.infer(bundle.ensemble.name, [tensor]).as_numpy(bundle.classifier.output_name)
    except InferenceServerException as exc:
        return exc
    finally:
        client.close()


def statistics(server, model: str) -> dict:
    """{batch size: executions} and the failure count, from the statistics API (an admin API)."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics(model, headers=server.admin_headers)["model_stats"][0]
    finally:
        client.close()
    return {"batches": {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]},
            "failures": stats["inference_stats"]["fail"]["count"]}


def repository_variant(built, tmp_path, edit):
    """A copy of the cpu flavor with one model's config edited through the protobuf schema."""
    target = tmp_path / "repository"
    shutil.copytree(built.flavor(CPU), target)
    edit(target)
    return target


def test_the_dali_step_does_not_batch_and_spends_ops_threads_as_instances(built, bundle):
    committed = bundle.preprocess_config
    generated = read_config(built.flavor(CPU) / bundle.preprocess.model_name / CONFIG_FILENAME)
    assert committed.HasField("dynamic_batching") and not generated.HasField("dynamic_batching")
    budget = sum(max(group.count, 1) for group in committed.instance_group) * bundle.preprocess.num_threads
    cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert [(group.kind, group.count) for group in generated.instance_group] == [(cpu, budget)]
    assert generated.parameters["num_threads"].string_value == "1"
    # The classifier keeps its dynamic batching: ONNX Runtime merges requests on the CPU without CUDA.
    classifier = read_config(built.flavor(CPU) / bundle.classifier.model_name / CONFIG_FILENAME)
    assert classifier.dynamic_batching == bundle.classifier_config.dynamic_batching


def test_warmup_decodes_the_real_jpeg_in_the_dali_backend(triton_backends, bundle, tmp_path):
    """A warmup sample that does not decode keeps the DALI model from loading: warmup runs the decoder."""
    def corrupt_warmup(repository):
        (sample,) = (repository / bundle.preprocess.model_name / WARMUP_DIR).iterdir()
        data = sample.read_bytes()
        sample.write_bytes(data[:2] + bytes(len(data) - 2))  # a JPEG marker, then nothing: same size, no image

    repository = repository_variant(triton_backends, tmp_path, corrupt_warmup)
    with pytest.raises(ServerError, match="exited"), local_server(triton_backends, repository, log_path=tmp_path / "server.log"):
        pass
    log = (tmp_path / "server.log").read_text()
    # Loading failed in the DALI decoder, on the instance's first run: the warmup (the cpu_server
    # fixture, on the real sample, is the same config with a good image, and is ready).
    assert "TRITONBACKEND_ModelInstanceInitialize: preprocess" in log
    assert "Critical error in pipeline" in log and "decoders.image" in log


def test_concurrent_load_on_the_unmodified_backends_fails_no_request(cpu_server, bundle, heldout):
    images = [path.read_bytes() for _, path in heldout] * 2
    before = {name: statistics(cpu_server, name) for name in (bundle.preprocess.model_name, bundle.classifier.model_name)}
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda image: infer(cpu_server.grpc_url, bundle, [image]), images))
    failures = [r for r in results if isinstance(r, Exception)]
    assert not failures, f"{len(failures)} of {len(images)} requests failed, e.g. {failures[0]}"
    labels = [label for label, _ in heldout] * 2
    accuracy = np.mean([bundle.classifier.labels[int(r[0].argmax())] == label for r, label in zip(results, labels, strict=True)])
    assert accuracy >= MIN_DEMO_ACCURACY
    preprocess = statistics(cpu_server, bundle.preprocess.model_name)
    assert max(preprocess["batches"]) == 1, "the DALI step must run one request per execution"
    classifier = statistics(cpu_server, bundle.classifier.model_name)
    merged = {size: n - before[bundle.classifier.model_name]["batches"].get(size, 0)
              for size, n in classifier["batches"].items() if size > 1}
    print(f"{len(images)} requests from 16 clients; classifier executions with merged requests: {merged}")
    assert sum(merged.values()) > 0


def test_a_bad_image_fails_only_its_own_request_in_the_dali_backend(cpu_server, bundle, heldout):
    """What the real DALI backend does with an image only a decoder can refuse (the image check before it
    refuses the rest: tests/test_isolation.py).

    One request per DALI execution isolates requests: such images sent among concurrent good ones fail
    alone. One still fails every image of its own request (DALI runs a request's images as one batch),
    and the error is UNKNOWN "Critical error in pipeline", not INVALID_ARGUMENT.
    """
    good = [(label, path.read_bytes()) for label, path in heldout[:24]]
    truncated = corpus.undecodable(heldout[0][1].read_bytes()).data
    requests = [[data] for _, data in good] + [[truncated]] * 6
    before = statistics(cpu_server, bundle.preprocess.model_name)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda images: infer(cpu_server.grpc_url, bundle, images), requests))
    for (label, _), result in zip(good, results, strict=False):
        assert not isinstance(result, Exception), result
        assert bundle.classifier.labels[int(result[0].argmax())] == label
    for result in results[len(good):]:
        assert isinstance(result, InferenceServerException)
        assert result.status() == "StatusCode.UNKNOWN" and "Critical error in pipeline" in result.message()
    after = statistics(cpu_server, bundle.preprocess.model_name)
    assert after["failures"] - before["failures"] == len(requests) - len(good)
    # Triton files failed executions under batch size 0; no execution ever held two requests.
    assert max(after["batches"]) == 1, "a bad image shared no DALI execution with another request"

    mixed = infer(cpu_server.grpc_url, bundle, [good[1][1], truncated, good[2][1]])
    assert isinstance(mixed, InferenceServerException), "one bad image fails its whole request"
    assert not isinstance(infer(cpu_server.grpc_url, bundle, [good[1][1]]), Exception), "the pipeline recovered"
    assert httpclient.InferenceServerClient(cpu_server.http_url).is_server_ready()


def test_upstream_fault_merged_requests_fail_in_the_dali_backend_without_a_cuda_driver(triton_backends, bundle, heldout,
                                                                                      tmp_path):
    """Why the cpu flavor's DALI step does not batch: with the committed dynamic batching, the unmodified
    backend gathers merged requests with cudaMemcpyAsync, which fails on a host without a CUDA driver.
    If this test starts failing, upstream fixed it: give the cpu flavor its batching back."""
    def batching_dali(repository):
        path = repository / bundle.preprocess.model_name / CONFIG_FILENAME
        config = read_config(path)
        config.dynamic_batching.CopyFrom(bundle.preprocess_config.dynamic_batching)
        config.dynamic_batching.max_queue_delay_microseconds = 2000  # merge reliably on 2 cores
        write_config(config, path)

    repository = repository_variant(triton_backends, tmp_path, batching_dali)
    images = [path.read_bytes() for _, path in heldout[:48]]
    with local_server(triton_backends, repository, log_path=tmp_path / "server.log") as server:
        one_at_a_time = [infer(server.grpc_url, bundle, [image]) for image in images[:4]]
        assert not [r for r in one_at_a_time if isinstance(r, Exception)], "requests that are never merged work"
        with ThreadPoolExecutor(max_workers=8) as pool:
            concurrent = list(pool.map(lambda image: infer(server.grpc_url, bundle, [image]), images))
    failures = [r for r in concurrent if isinstance(r, Exception)]
    print(f"DALI step with dynamic batching, 8 concurrent clients: {len(failures)} of {len(images)} requests failed")
    assert failures, "no request failed: has dali_backend stopped copying host memory with CUDA?"
    assert all("cudaErrorInsufficientDriver" in f.message() for f in failures), failures[0].message()
