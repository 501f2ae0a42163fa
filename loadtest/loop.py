"""A closed loop of classification requests: the load generator the benchmarks share.

No Locust here (importing it monkey-patches the whole process for gevent) and nothing of the build:
only the project's client, so `make bench`, the load generator's ceiling and later tools measure
with the same loop.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence

from client.api import build_request, triton_module
from client.images import PreparedImage


@dataclasses.dataclass(frozen=True)
class LoopResult:
    requests_per_s: float  # answered requests (failures excluded) per second of the run
    latencies_ms: list[float]  # of the answered requests
    failures: int
    first_failure: str | None  # what the server (or the connection) said, to put in a report
    answered_at: list[float]  # time.monotonic() when each answered request came back

    def answered_between(self, start: float, end: float) -> int:
        return sum(start <= moment <= end for moment in self.answered_at)


def closed_loop(protocol: str, url: str, model: str, names: tuple[str, str], images: Sequence[PreparedImage], concurrency: int,
                seconds: float, top_k: int = 1, stop: threading.Event | None = None) -> LoopResult:
    """`concurrency` threads, one client each, one image per request, back to back, for `seconds` or
    until `stop` is set.

    A failed request, whatever failed (the server, the connection), is counted and the loop goes on:
    a load test must outlive the errors it measures. top_k 0 asks for the raw output.
    """
    module = triton_module(protocol, aio=False)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    answered: list[list[float]] = [[] for _ in range(concurrency)]
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        client = module.InferenceServerClient(url)
        n = index
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            inputs, outputs = build_request(module, names, [images[n % len(images)]], top_k)
            began = time.perf_counter()
            try:
                client.infer(model, inputs, outputs=outputs)
                latencies[index].append((time.perf_counter() - began) * 1000)
                answered[index].append(time.monotonic())
            except Exception as exc:  # counted and reported; the user keeps going
                failures.append(f"{type(exc).__name__}: {exc}")
            n += concurrency
        client.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [value for values in latencies for value in values]
    moments = sorted(moment for values in answered for moment in values)
    return LoopResult(len(flat) / (time.monotonic() - started), flat, len(failures), failures[0] if failures else None,
                      moments)
