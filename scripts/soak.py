"""Soak: hours of mixed traffic, one crash, and the figures that say whether the server held up.

Against a server started for the run (`--flavor local|cpu`) or any server (`--url`, e.g. the GPU box):
- good traffic: gRPC and HTTP clients in a closed loop, each through the project's client (with its
  retries), over images of many kinds (scripts/corpus.py: JPEG baseline, progressive, CMYK, grayscale,
  EXIF-rotated, PNG with alpha, BMP, very large and tiny);
- bad traffic, about 1% of requests: truncated, empty, random bytes, GIF, decompression bombs, sent raw
  (not through the client's checks, which would hide them from the server); each must be refused with
  INVALID_ARGUMENT and its reason;
- every few seconds, the server's memory (tritonserver and every python-backend stub), open file
  descriptors and threads; growth is measured after a warm-up that follows the restart and a burst
  of the largest image from every client at once (`_fill_pools` says why);
- once, early in the run, the server is killed (SIGKILL) and started again (`--restart-cmd` for a
  remote one): recovery_s is how long a new client found it unavailable (a readiness probe every
  0.1 s, from its first refusal to its next "ready"), and good requests in that window must still
  succeed (the client retries).
It ends with one line, and writes a CSV and a PNG of memory and latency over time:
    soak: good=<n> good_failed=<n> bad_sent=<n> bad_rejected=<n> rss_growth_pct=<x> fd_growth=<n>
          restarts=<n> recovery_s=<x> p99_ms=<x>   (one line)
Exit 0 when the goals hold (no good request failed, every bad one refused clearly, RSS growth under
5% after warm-up), 1 when one does not, 2 on a usage error.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from client import ImageClassifierClient
from client.api import triton_module
from client.image_formats import UNDECODABLE
from scripts import corpus, process_stats
from scripts.demo import heldout_images
from scripts.layout import Layout
from scripts.serve import LocalServer

DEFAULT_SECONDS = 600
SECONDS_ENV = "SOAK_SECONDS"
BAD_FRACTION = 0.01
SAMPLE_EVERY_S = 2.0
PROBE_EVERY_S = 0.1
MAX_RSS_GROWTH_PCT = 5.0
RESTART_AT = 0.15  # of the run: early, so that most of it measures growth from one start
WARMUP_AFTER_RESTART_S = 30.0  # or a tenth of a short run
FILL_ROUNDS = 5
CLIENT_RETRIES = 10  # backoff up to 8 s: rides through a restart of tens of seconds
CLIENT_TIMEOUT_S = 120.0


@dataclasses.dataclass
class Tally:
    good: int = 0
    good_failed: int = 0
    first_good_failure: str | None = None
    bad_sent: int = 0
    bad_rejected: int = 0
    first_bad_surprise: str | None = None
    answered: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (monotonic time, latency ms)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


@dataclasses.dataclass(frozen=True)
class Result:
    good: int
    good_failed: int
    bad_sent: int
    bad_rejected: int
    rss_growth_pct: float
    fd_growth: int
    restarts: int
    recovery_s: float
    p99_ms: float
    first_good_failure: str | None
    first_bad_surprise: str | None

    def line(self) -> str:
        return (f"soak: good={self.good} good_failed={self.good_failed} bad_sent={self.bad_sent} "
                f"bad_rejected={self.bad_rejected} rss_growth_pct={self.rss_growth_pct:.2f} fd_growth={self.fd_growth} "
                f"restarts={self.restarts} recovery_s={self.recovery_s:.2f} p99_ms={self.p99_ms:.1f}")

    def goals_met(self) -> bool:
        return (self.good_failed == 0 and self.bad_rejected == self.bad_sent
                and not self.rss_growth_pct >= MAX_RSS_GROWTH_PCT)  # nan (not measured) does not fail


class Target:
    """The server under load: where it answers, and how to kill and restart it and find its process."""

    def __init__(self, grpc_url: str, http_url: str, model: str, local: LocalServer | None = None,
                 restart_cmd: str | None = None, pid: int | None = None):
        self.grpc_url, self.http_url, self.model = grpc_url, http_url, model
        self.local, self.restart_cmd, self.fixed_pid = local, restart_cmd, pid

    def url(self, protocol: str) -> str:
        return self.grpc_url if protocol == "grpc" else self.http_url

    def classifier(self, protocol: str, concurrency: int = 1) -> ImageClassifierClient:
        """The project's client, with retries that ride through a restart."""
        return ImageClassifierClient(self.url(protocol), protocol=protocol, model=self.model, retries=CLIENT_RETRIES,
                                     timeout=CLIENT_TIMEOUT_S, concurrency=concurrency)

    @property
    def pid(self) -> int | None:
        return self.local.process.pid if self.local is not None else self.fixed_pid

    def restart(self) -> None:
        if self.local is not None:
            self.local.process.kill()
            self.local.process.wait()
            self.local.stop()  # reaps the python stubs and the shared memory the kill left
            self.local.start()
            self.local.wait_ready()
        elif self.restart_cmd:
            subprocess.run(shlex.split(self.restart_cmd), check=True, timeout=600)


def _good_worker(target: Target, protocol: str, samples: list[bytes], tally: Tally, stop: threading.Event,
                 bad: Callable[[], None], seed: int) -> None:
    chooser = random.Random(seed)
    with target.classifier(protocol) as classifier:
        while not stop.is_set():
            if chooser.random() < BAD_FRACTION:
                bad()
                continue
            started = time.perf_counter()
            (result,) = classifier.classify([chooser.choice(samples)], top_k=1)
            with tally.lock:
                tally.good += 1
                if result.ok:
                    tally.answered.append((time.monotonic(), (time.perf_counter() - started) * 1000))
                else:
                    tally.good_failed += 1
                    tally.first_good_failure = tally.first_good_failure or str(result.error)


def _bad_sender(target: Target, protocol: str, samples: list[corpus.Sample], tally: Tally, seed: int) -> Callable[[], None]:
    """Sends one bad image raw (no client checks), retrying only while the server is unreachable."""
    module = triton_module(protocol, aio=False)
    chooser = random.Random(seed)
    url = target.url(protocol)
    invalid = {"StatusCode.INVALID_ARGUMENT", "400"}

    def attempt(data: np.ndarray) -> None:
        client = module.InferenceServerClient(url)
        try:
            tensor = module.InferInput("IMAGE", list(data.shape), "UINT8")
            tensor.set_data_from_numpy(data)
            client.infer(target.model, [tensor])
        finally:
            client.close()

    def send() -> None:
        sample = chooser.choice(samples)
        data = np.frombuffer(sample.data, np.uint8).reshape(1, -1) if sample.data else np.zeros((1, 0), np.uint8)
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while True:
            try:
                attempt(data)
                outcome = "accepted"
            except Exception as exc:  # the server's answer, or the connection's failure
                status = str(exc.status() or "") if hasattr(exc, "status") else ""
                message = (exc.message() if hasattr(exc, "message") else "") or str(exc)
                unreachable = "UNAVAILABLE" in status or "connect" in message.lower() or isinstance(exc, OSError)
                if status in invalid and UNDECODABLE in message:
                    outcome = "rejected"
                elif unreachable and time.monotonic() < deadline:
                    time.sleep(0.5)  # the server is restarting: send it again
                    continue
                else:
                    outcome = f"{status} {message[:200]}"
            break
        with tally.lock:
            tally.bad_sent += 1
            if outcome == "rejected":
                tally.bad_rejected += 1
            else:
                tally.first_bad_surprise = tally.first_bad_surprise or f"{sample.kind}: {outcome}"

    return send


def _probe_readiness(target: Target, stop: threading.Event, probes: list[tuple[float, float, bool]]) -> None:
    """What a new client sees: (asked at, answered at, ready) every PROBE_EVERY_S, on a fresh connection."""
    module = triton_module("http", aio=False)
    while not stop.is_set():
        asked = time.monotonic()
        try:
            client = module.InferenceServerClient(target.http_url, connection_timeout=1.0, network_timeout=1.0)
            try:
                ready = client.is_server_ready() and client.is_model_ready(target.model)
            finally:
                client.close()
        except Exception:  # refused, reset or timed out: unavailable
            ready = False
        probes.append((asked, time.monotonic(), ready))
        stop.wait(max(0.0, PROBE_EVERY_S - (time.monotonic() - asked)))


def unavailable_window(probes: list[tuple[float, float, bool]], since: float) -> tuple[float, float] | None:
    """From the first probe after `since` that found the server unavailable to the next answer that it was ready."""
    down = next((asked for asked, _, ready in probes if asked >= since and not ready), None)
    if down is None:
        return None
    up = next((answered for asked, answered, ready in probes if asked > down and ready), None)
    return (down, up) if up is not None else None


def _fill_pools(target: Target, largest: bytes, concurrency: int) -> None:
    """Send the largest good image from `concurrency` clients at once, over both protocols, a few times.

    The server keeps memory it needed once, for reuse: the python backend's shared memory and DALI's
    buffers grow to the largest batch they have held, and the traffic's largest batch (every client
    sending the largest image at once) is rare, so without this it arrives at a random time and looks
    like growth. After it, what still grows is what a leak would grow."""
    def burst(protocol: str) -> None:
        with target.classifier(protocol, concurrency) as classifier:
            for _ in range(FILL_ROUNDS):
                classifier.classify([largest] * concurrency, top_k=1)

    threads = [threading.Thread(target=burst, args=(protocol,)) for protocol in ("grpc", "http")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run(target: Target, layout: Layout, seconds: float, concurrency: int, output: Path,
        progress: Callable[[str], None] = print) -> Result:
    photos = [path.read_bytes() for path in ([path for _, path in heldout_images(layout.heldout)][:20]
                                             or list(layout.repository.rglob("*.jpg")))]
    if not photos:
        raise ValueError(f"no photos to make the images from: {layout.heldout} is empty (run `make build`)")
    good = [sample.data for sample in corpus.good(photos)]
    bad = corpus.bad(photos[0])
    tally, stop = Tally(), threading.Event()
    workers = []
    for index in range(concurrency):
        protocol = ("grpc", "http")[index % 2]
        sender = _bad_sender(target, protocol, bad, tally, seed=1000 + index)
        workers.append(threading.Thread(target=_good_worker, args=(target, protocol, good, tally, stop, sender, index),
                                        daemon=True))
    probes: list[tuple[float, float, bool]] = []
    workers.append(threading.Thread(target=_probe_readiness, args=(target, stop, probes), daemon=True))
    samples: list[tuple[float, process_stats.Sample | None]] = []
    started = time.monotonic()
    for worker in workers:
        worker.start()
    restart_at, restarted_at, next_sample = started + RESTART_AT * seconds, None, started
    restartable = target.local is not None or bool(target.restart_cmd)
    largest = max(good, key=len)
    if not restartable:
        _fill_pools(target, largest, concurrency)
    filled_at = time.monotonic()
    while time.monotonic() < started + seconds:
        now = time.monotonic()
        if now >= next_sample:
            pid = target.pid
            samples.append((now, process_stats.sample(pid) if pid else None))
            next_sample += SAMPLE_EVERY_S
            if len(samples) % 15 == 0:
                progress(f"soak: {now - started:.0f}/{seconds:.0f} s, good={tally.good} failed={tally.good_failed} "
                         f"bad={tally.bad_sent}")
        if restarted_at is None and now >= restart_at and restartable:
            progress("soak: killing the server (SIGKILL) and starting it again ...")
            restarted_at = time.monotonic()
            target.restart()
            progress(f"soak: the server is back after {time.monotonic() - restarted_at:.1f} s")
            _fill_pools(target, largest, concurrency)
            filled_at = time.monotonic()
        time.sleep(0.2)
    stop.set()
    for worker in workers:
        worker.join(timeout=CLIENT_TIMEOUT_S)
    window = unavailable_window(probes, restarted_at) if restarted_at is not None else None
    recovery_s = window[1] - window[0] if window else float("nan")
    warm_from = max(window[1] if window else restarted_at or started, filled_at) + min(WARMUP_AFTER_RESTART_S, seconds / 10)
    measured = [(t, s) for t, s in samples if s is not None and t >= warm_from]
    rss_growth = fd_growth = float("nan")
    if len(measured) >= 6:
        first, last = measured[:3], measured[-3:]
        rss_start, rss_end = (float(np.median([s.rss_bytes for _, s in part])) for part in (first, last))
        rss_growth = 100 * (rss_end - rss_start) / rss_start
        fd_growth = int(np.median([s.open_fds for _, s in last]) - np.median([s.open_fds for _, s in first]))
    latencies = [latency for _, latency in tally.answered]
    result = Result(tally.good, tally.good_failed, tally.bad_sent, tally.bad_rejected, rss_growth,
                    fd_growth if not math.isnan(fd_growth) else 0, int(restarted_at is not None), recovery_s,
                    float(np.percentile(latencies, 99)) if latencies else float("nan"), tally.first_good_failure,
                    tally.first_bad_surprise)
    _write(output, started, samples, tally, restarted_at, warm_from)
    return result


def _write(output: Path, started: float, samples, tally: Tally, restarted_at: float | None, warm_from: float) -> None:
    output.mkdir(parents=True, exist_ok=True)
    answered = np.array(tally.answered) if tally.answered else np.zeros((0, 2))
    rows = []
    for (moment, sample), (following, _) in zip(samples, [*samples[1:], (math.inf, None)], strict=True):
        window = answered[(answered[:, 0] >= moment) & (answered[:, 0] < following)] if len(answered) else answered
        rows.append({"t_s": round(moment - started, 1),
                     "rss_mib": round(sample.rss_bytes / 2**20, 1) if sample else "",
                     "heap_mib": round(sample.heap_bytes / 2**20, 1) if sample else "",
                     "shm_mib": round(sample.shm_bytes / 2**20, 1) if sample else "",
                     "open_fds": sample.open_fds if sample else "", "threads": sample.threads if sample else "",
                     "processes": sample.processes if sample else "", "answered": len(window),
                     "p50_ms": round(float(np.percentile(window[:, 1], 50)), 2) if len(window) else "",
                     "p99_ms": round(float(np.percentile(window[:, 1], 99)), 2) if len(window) else ""})
    with open(output / "soak.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["t_s"])
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, latency) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for column, label in (("rss_mib", "server memory (MiB, PSS)"), ("heap_mib", "of which heaps"),
                          ("shm_mib", "of which shared memory")):
        points = [(r["t_s"], r[column]) for r in rows if r[column] != ""]
        memory.plot([p[0] for p in points], [p[1] for p in points], label=label)
    points = [(r["t_s"], r["p50_ms"], r["p99_ms"]) for r in rows if r["p50_ms"] != ""]
    latency.plot([p[0] for p in points], [p[1] for p in points], label="p50 ms")
    latency.plot([p[0] for p in points], [p[2] for p in points], label="p99 ms")
    for axis in (memory, latency):
        if restarted_at is not None:
            axis.axvline(restarted_at - started, color="red", linestyle="--", label="SIGKILL + restart")
        axis.axvline(warm_from - started, color="grey", linestyle=":", label="warm-up ends")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    latency.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(output / "soak.png", dpi=110)
    plt.close(figure)


def default_seconds() -> float:
    return float(os.environ.get(SECONDS_ENV) or DEFAULT_SECONDS)
