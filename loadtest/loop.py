"""A closed loop of classification requests: the load generator the benchmarks share.

No Locust here (importing it monkey-patches the whole process for gevent) and nothing of the build:
only the project's client, so `make bench`, the load generator's ceiling and later tools measure
with the same loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from client.api import build_request, triton_module
from client.images import PreparedImage


def closed_loop(protocol: str, url: str, model: str, names: tuple[str, str], images: Sequence[PreparedImage], concurrency: int,
                seconds: float, top_k: int = 1) -> tuple[float, list[float]]:
    """`concurrency` threads, one client each, one image (PreparedImage) per request, back to back.

    Returns (requests/s, latencies in ms). top_k 0 asks for the raw output.
    """
    module = triton_module(protocol, aio=False)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        client = module.InferenceServerClient(url)
        n = index
        while time.monotonic() < deadline:
            inputs, outputs = build_request(module, names, [images[n % len(images)]], top_k)
            began = time.perf_counter()
            client.infer(model, inputs, outputs=outputs)
            latencies[index].append((time.perf_counter() - began) * 1000)
            n += concurrency
        client.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [value for values in latencies for value in values]
    return len(flat) / (time.monotonic() - started), flat
