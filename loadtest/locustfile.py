"""Locust users for the served ensemble, over gRPC and HTTP, with an SLO gate and the server's view.

    locust -f loadtest/locustfile.py --config loadtest/locust.conf [GrpcUser|HttpUser] [--tags grpc|http]

Each user sends real encoded images from --images-dir (one or --images-per-request per request) and
asks for --top-k labels, back to back (closed loop: the load is the number of users). Requests are
built and parsed by the project's client (client.api), so the load test speaks exactly as it does.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

import grpc.experimental.gevent
from locust import LoadTestShape, User, constant, events, tag, task
from locust.runners import MasterRunner, WorkerRunner

from client import defaults
from client.api import build_request, tensor_names, triton_module
from client.defaults import DEFAULT_MODEL
from client.endpoints import parse_urls
from client.image_formats import SUFFIXES as IMAGE_SUFFIXES
from client.images import PreparedImage, prepare
from loadtest import report
from loadtest.shapes import SHAPES, users_at
from scripts.layout import Layout

# gRPC's C core must yield to gevent, or one user blocks the whole process (after Locust's monkey patching).
grpc.experimental.gevent.init_gevent()

CORPUS: list[PreparedImage] = []
USER_NUMBERS = itertools.count()  # which server a new user keeps to, with several
RUN: dict = {}  # what the master (or the local runner) collects over the run


class ConfiguredShape(LoadTestShape):
    """The shape named by --load-shape (Locust uses the one shape class a locustfile defines)."""

    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        users = users_at(options.load_shape, self.get_run_time(), options.num_users or 1, options.run_time or 0,
                         options.step_users, options.step_seconds, options.spike_seconds)
        if users is None:
            return None
        # A spike arrives at once; the other shapes ramp at --spawn-rate.
        return users, (users if options.load_shape == "spike" else options.spawn_rate or users)


@events.init_command_line_parser.add_listener
def add_options(parser):
    group = parser.add_argument_group("triton-bundle")
    group.add_argument("--model", default=DEFAULT_MODEL, help="model to load (default: %(default)s)")
    group.add_argument("--top-k", type=int, default=1, help="labels asked per image; 0: the raw output (default: %(default)s)")
    group.add_argument("--images-per-request", type=int, default=1, help="images packed in one request (default: %(default)s)")
    group.add_argument("--images-dir", default=str(Layout().heldout),
                       help="folder of images to send, searched recursively (default: the demo's held-out images)")
    served = defaults.Endpoint.from_env()  # the server `make serve` starts
    group.add_argument("--triton-grpc", default=served.grpc_url,
                       help="gRPC address; several, comma-separated, share the users out (default: %(default)s)")
    group.add_argument("--triton-http", default=served.http_url,
                       help="HTTP address; several, comma-separated, share the users out (default: %(default)s)")
    group.add_argument("--metrics-url", default=served.metrics_url,
                       help="Triton's Prometheus endpoint, scraped at the start and the end (empty: skip; default: %(default)s)")
    group.add_argument("--load-shape", choices=SHAPES, default="steady", help="steady, step or spike (default: %(default)s)")
    group.add_argument("--step-users", type=int, default=2, help="step shape: users added per step (default: %(default)s)")
    group.add_argument("--step-seconds", type=float, default=10.0, help="step shape: seconds per step (default: %(default)s)")
    group.add_argument("--spike-seconds", type=float, default=10.0,
                       help="spike shape: length of the spike (default: %(default)s)")
    group.add_argument("--slo-p95-ms", type=float, default=None, help="fail the run when p95 latency exceeds this")
    group.add_argument("--slo-p99-ms", type=float, default=None, help="fail the run when p99 latency exceeds this")
    group.add_argument("--slo-error-rate", type=float, default=None,
                       help="fail the run when failures/requests exceed this (0..1)")
    group.add_argument("--summary-file", default="", help="write the summary as JSON here (default: <--csv prefix>_summary.json)")


@events.init.add_listener
def load_corpus(environment, **kwargs):
    if isinstance(environment.runner, MasterRunner):
        return  # the master sends nothing
    options = environment.parsed_options
    folder = Path(options.images_dir)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"error: no images in {folder} (--images-dir); `make build` writes the demo's")
    CORPUS[:] = [prepare(path) for path in files]


class TritonUser(User):
    """Sends classification requests back to back and reports each to Locust."""

    abstract = True
    wait_time = constant(0)
    protocol = ""

    def on_start(self):
        options = self.environment.parsed_options
        self.triton = triton_module(self.protocol, aio=False)
        # Several servers: each user keeps to one, in turn, so the load is spread and every failure is the
        # server's own (a load test measures servers; it does not fail over like the client does).
        urls = parse_urls(options.triton_grpc if self.protocol == "grpc" else options.triton_http)
        self.url = urls[next(USER_NUMBERS) % len(urls)]
        self.client = self.triton.InferenceServerClient(self.url)
        self.names = tensor_names(self.client.get_model_metadata(options.model))
        # Users start at different places in the corpus, so concurrent requests carry different images.
        self.images = itertools.islice(itertools.cycle(CORPUS), random.randrange(len(CORPUS)), None)

    def on_stop(self):
        self.client.close()

    def classify(self):
        options = self.environment.parsed_options
        batch = list(itertools.islice(self.images, options.images_per_request))
        inputs, outputs = build_request(self.triton, self.names, batch, options.top_k)
        started, length, error = time.perf_counter(), 0, None
        try:
            result = self.client.infer(options.model, inputs, outputs=outputs)
            scores = result.as_numpy(self.names[1])
            length = scores.nbytes if scores.dtype != object else sum(len(entry) for entry in scores.ravel())
        except Exception as exc:  # reported to Locust as a failure, never raised
            error = exc
        self.environment.events.request.fire(
            request_type=self.protocol, name=f"{options.model} x{len(batch)}",
            response_time=(time.perf_counter() - started) * 1000, response_length=length, exception=error,
            context={"images": len(batch)})


class GrpcUser(TritonUser):
    protocol = "grpc"

    @tag("grpc")
    @task
    def classify_grpc(self):
        self.classify()


class HttpUser(TritonUser):
    """tritonclient's HTTP client sends tensors with Triton's binary tensor extension."""

    protocol = "http"

    @tag("http")
    @task
    def classify_http(self):
        self.classify()


def _collects(environment) -> bool:
    return not isinstance(environment.runner, WorkerRunner)


@events.test_start.add_listener
def on_test_start(environment, **kwargs):
    if not _collects(environment):
        return
    RUN.update(cpu_started=(time.process_time(), time.monotonic()), metrics_before=None, server_error=None)
    url = environment.parsed_options.metrics_url
    if url:
        try:
            RUN["metrics_before"] = report.scrape(url)
        except OSError as exc:
            RUN["server_error"] = f"{url}: {exc}"


@events.test_stop.add_listener
def on_test_stop(environment, **kwargs):
    if not _collects(environment):
        return
    # This process's CPU over the run, in % of one core (Locust runs on one core per process).
    cpu, wall = RUN.get("cpu_started", (time.process_time(), time.monotonic()))
    RUN["cpu_percent"] = 100 * (time.process_time() - cpu) / max(time.monotonic() - wall, 1e-9)
    RUN["server"] = {}
    if RUN.get("metrics_before") is not None:
        try:
            RUN["server"] = report.server_view(RUN["metrics_before"], report.scrape(environment.parsed_options.metrics_url))
        except OSError as exc:
            RUN["server_error"] = f"{environment.parsed_options.metrics_url}: {exc}"


@events.quitting.add_listener
def on_quitting(environment, **kwargs):
    if not _collects(environment):
        return
    options, total = environment.parsed_options, environment.stats.total
    error_rate = total.num_failures / total.num_requests if total.num_requests else 0.0
    p95, p99 = total.get_response_time_percentile(0.95) or 0.0, total.get_response_time_percentile(0.99) or 0.0
    slo = report.Slo(options.slo_p95_ms, options.slo_p99_ms, options.slo_error_rate)
    passed, verdict = slo.verdict(p95, p99, error_rate, total.num_requests)
    cpu_percent = RUN.get("cpu_percent", 0.0)
    # Distributed: the master sends nothing; it knows whether a worker reported a CPU above Locust's warning level.
    worker_saturated = bool(getattr(environment.runner, "worker_cpu_warning_emitted", False))
    saturated = cpu_percent >= report.SATURATED_CPU_PERCENT or worker_saturated
    summary = {
        "client": {"requests": total.num_requests, "failures": total.num_failures, "rps": total.total_rps,
                   "p50_ms": total.get_response_time_percentile(0.5) or 0.0, "p95_ms": p95, "p99_ms": p99,
                   "error_rate": error_rate, "cpu_percent": cpu_percent},
        "server": RUN.get("server") or {},
        "server_error": RUN.get("server_error"),
        "saturated": saturated,
        "slo": {**slo.__dict__, "passed": passed},
        "verdict": verdict,
    }
    print(report.format_summary(summary), flush=True)
    path = options.summary_file or (f"{options.csv_prefix}_summary.json" if options.csv_prefix else "")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=2))
    if not passed:
        environment.process_exit_code = 1
