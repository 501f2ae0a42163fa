"""Bad images sent concurrently with good ones, raw (no client-side checks), to the whole ensemble of the
local flavor and of the cpu flavor (Triton's own DALI backend): each test first shows, from the
statistics API, that a bad image really shared a batch with good ones where a batch could fail, then
that every good request was answered and every bad one refused with its reason."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client.image_formats import UNDECODABLE
from scripts import corpus
from scripts.config import load_bundle, read_config, write_config
from scripts.constants import CONFIG_FILENAME, CPU, LOCAL
from scripts.serve import local_server

# Long enough that a burst of concurrent requests waits for each other and runs as one batch.
GATHER_MICROSECONDS = 500_000
# What the server answers a refused image with, by corpus kind (the image check's reasons).
REASONS = {
    "jpeg-truncated": "truncated: no end-of-image marker",
    "png-truncated": "truncated: no IEND chunk",
    "empty": "the image is empty (0 bytes)",
    "random-bytes": "not a recognized image format",
    "gif": "GIF images are not supported",
    "png-bomb": "over the limit of",
    "jpeg-bomb": "over the limit of",
}


def statistics(server, model: str) -> dict[int, int]:
    """{batch size: executions} of `model` (an admin API)."""
    with httpclient.InferenceServerClient(server.http_url) as client:
        stats = client.get_inference_statistics(model, headers=server.admin_headers)["model_stats"][0]
    return {entry["batch_size"]: entry["compute_infer"]["count"] for entry in stats["batch_stats"]}


def executions_since(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}


def send_together(server, bundle, images: list[bytes]) -> list[int | InferenceServerException]:
    """Each image in its own gRPC request, all released at once; the top class index or the error."""
    barrier = threading.Barrier(len(images))

    def send(data: bytes):
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            tensor = grpcclient.InferInput(bundle.preprocess.input_name if bundle.check is None else bundle.check.input_name,
                                           [1, len(data)], "UINT8")
            tensor.set_data_from_numpy(np.frombuffer(data, np.uint8).reshape(1, len(data)))
            barrier.wait()
            try:
                result = client.infer(bundle.ensemble.name, [tensor])
            except InferenceServerException as exc:
                return exc
            return int(np.argmax(result.as_numpy(bundle.classifier.output_name)[0]))

    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        return list(pool.map(send, images))


@pytest.fixture(params=[LOCAL, CPU])
def gathering_server(request, tmp_path):
    """A server of the flavor whose batching steps wait GATHER_MICROSECONDS for a batch to fill."""
    layout = request.getfixturevalue("built" if request.param == LOCAL else "triton_backends")
    repository = tmp_path / "repository"
    shutil.copytree(layout.flavor(request.param), repository)
    for path in repository.glob(f"*/{CONFIG_FILENAME}"):
        config = read_config(path)
        if config.HasField("dynamic_batching"):
            config.dynamic_batching.max_queue_delay_microseconds = GATHER_MICROSECONDS
            write_config(config, path, "test variant: batches wait for a burst to gather")
    with local_server(layout, repository, log_path=tmp_path / "server.log") as running:
        yield request.param, running, load_bundle(repository)


def test_images_the_check_refuses_fail_alone_in_a_batch_with_good_ones(gathering_server, heldout):
    flavor, server, bundle = gathering_server
    good = [(label, path.read_bytes()) for label, path in heldout[:12]]
    bad = corpus.bad(heldout[0][1].read_bytes())
    images = [data for _, data in good] + [sample.data for sample in bad]
    before = statistics(server, bundle.check.model_name)
    outcomes = send_together(server, bundle, images)
    batches = executions_since(before, statistics(server, bundle.check.model_name))
    print(f"{flavor}: image check executions by batch size: {batches}")
    assert sum(size * count for size, count in batches.items()) == len(images)
    assert 1 not in batches, "a request ran alone: the bad images did not share a batch with good ones"
    for (label, _), outcome in zip(good, outcomes, strict=False):
        assert not isinstance(outcome, Exception), outcome
        assert bundle.classifier.labels[outcome] == label
    for sample, outcome in zip(bad, outcomes[len(good):], strict=True):
        assert isinstance(outcome, InferenceServerException), (sample.kind, outcome)
        assert outcome.status() == "StatusCode.INVALID_ARGUMENT", (sample.kind, outcome.status())
        assert REASONS[sample.kind] in outcome.message(), (sample.kind, outcome.message())
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_server_ready() and all(client.is_model_ready(name) for name in bundle.configs)


def test_an_image_only_the_decoder_refuses_fails_alone(gathering_server, heldout):
    """A JPEG whose framing is whole passes the check and reaches the preprocessing. The local flavor's
    preprocessing batches it with good images and retries the batch request by request; the cpu flavor's
    DALI step runs one request per execution (scripts/repository.py), so it never shares a batch."""
    flavor, server, bundle = gathering_server
    good = [(label, path.read_bytes()) for label, path in heldout[12:24]]
    undecodable = corpus.undecodable(heldout[0][1].read_bytes())
    images = [data for _, data in good] + [undecodable.data]
    before = statistics(server, bundle.preprocess.model_name)
    outcomes = send_together(server, bundle, images)
    batches = executions_since(before, statistics(server, bundle.preprocess.model_name))
    print(f"{flavor}: preprocessing executions by batch size: {batches}")
    if flavor == LOCAL:
        assert 1 not in batches, "the undecodable image did not share a batch with good ones"
    else:
        # (The DALI backend counts its failed execution under batch size 0.)
        assert max(batches) == 1 and sum(batches.values()) == len(images), "the cpu flavor's DALI step ran requests together"
    for (label, _), outcome in zip(good, outcomes, strict=False):
        assert not isinstance(outcome, Exception), outcome
        assert bundle.classifier.labels[outcome] == label
    refused = outcomes[-1]
    assert isinstance(refused, InferenceServerException)
    if flavor == LOCAL:
        assert refused.status() == "StatusCode.INVALID_ARGUMENT" and UNDECODABLE in refused.message()
    print(f"{flavor}: the undecodable image: {refused.status()} {refused.message()[:200]}")
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_server_ready()
