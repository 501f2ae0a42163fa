"""Verify a running deployment: the one table a user pastes back when something is off (`make verify`).

Runs on the host, against the server `docker compose up` published (or `make serve`'s): the doctor's
summary, the engine the builder made (its metadata: TensorRT, GPU, precision, accuracy gate), the Triton
and the DALI the server runs, the held-out top-1 accuracy through the served ensemble, and a short
throughput and latency figure at concurrency 1 and 16 with the project's client (the closed loop
`make bench` measures with). Each row says ok, warn, fail or skip; exit 1 when one failed.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable, Iterator

from client import defaults
from scripts import plan_metadata
from scripts.config import Bundle, ConfigError, load_bundle
from scripts.constants import GPU, TENSORRT_PLAN
from scripts.demo import MIN_DEMO_ACCURACY, heldout_images
from scripts.doctor import FAIL, OK, WARN, Doctor, format_checks
from scripts.layout import COMPOSE_FILE, Layout

SKIP = "skip"
CONCURRENCIES = (1, 16)
SECONDS = 5.0
_DALI_VERSION = "import nvidia.dali; print(nvidia.dali.__version__)"
# The server's DALI: inside the compose service on the GPU box; this environment's elsewhere (the local
# flavor's python models and the cpu flavor's DALI backend built here run the DALI of this venv).
COMPOSE_SERVER_SERVICE = "triton"


@dataclasses.dataclass(frozen=True)
class Row:
    item: str
    status: str
    value: str


def dali_version_command(flavor: str) -> list[str]:
    if flavor == GPU:
        return ["docker", "compose", "-f", str(COMPOSE_FILE), "exec", "-T", COMPOSE_SERVER_SERVICE, "python3", "-c",
                _DALI_VERSION]
    return [sys.executable, "-c", _DALI_VERSION]


def engine_row(bundle: Bundle, flavor: str) -> Row:
    if flavor != GPU:
        return Row("engine", SKIP, f"none: the {flavor} flavor serves the ONNX model")
    plan = bundle.artifact(bundle.classifier.model_name, TENSORRT_PLAN)
    metadata = plan_metadata.read(plan)
    if metadata is None:
        return Row("engine", FAIL, f"no metadata beside {plan}: has the compose builder run?")
    gate = metadata.get("accuracy_gate") or {}
    verdict = "passed" if gate.get("passed") else "FAILED"
    return Row("engine", OK if gate.get("passed") else FAIL,
               f"TensorRT {metadata.get('tensorrt_version')} on {metadata.get('gpu_name')} (compute capability "
               f"{metadata.get('compute_capability')}), {metadata.get('precision')}, built {metadata.get('built_at')}; gate "
               f"{verdict}: top-1 agreement {gate.get('top1_agreement', float('nan')):.4f}, max abs diff "
               f"{gate.get('max_abs_diff', float('nan')):.2e} on {gate.get('samples')} images")


def server_rows(url: str, flavor: str) -> Iterator[Row]:
    import tritonclient.grpc as grpcclient

    try:
        with grpcclient.InferenceServerClient(url) as client:
            metadata = client.get_server_metadata(as_json=True, client_timeout=10)
            ready = client.is_server_ready(client_timeout=10)
    except Exception as exc:  # whatever stops the server from answering is the row's finding
        yield Row("server", FAIL, f"no answer at {url}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return
    yield Row("server", OK if ready else FAIL, f"Triton {metadata.get('version')} at {url}, "
              f"{'ready' if ready else 'NOT ready'}")
    command = dali_version_command(flavor)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        found = done.stdout.strip() if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no answer"])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        done, found = None, str(exc)
    if done is not None and done.returncode == 0:
        where = f"the compose `{COMPOSE_SERVER_SERVICE}` service" if flavor == GPU else "this environment, the server's"
        yield Row("dali", OK, f"DALI {found} ({where})")
    else:
        yield Row("dali", WARN, f"the server's DALI version is unknown: {found}")


def accuracy_row(url: str, layout: Layout, model: str) -> Row:
    from client import ImageClassifierClient

    held_out = heldout_images(layout.heldout)
    if not held_out:
        return Row("accuracy", SKIP, f"no held-out images in {layout.heldout} (the build makes them for the demo model)")
    with ImageClassifierClient(url, model=model, timeout=60) as classifier:
        results = classifier.classify([path for _, path in held_out], top_k=1)
    errors = [result.error for result in results if not result.ok]
    correct = sum(result.ok and result.top.label == label for result, (label, _) in zip(results, held_out, strict=True))
    accuracy = correct / len(held_out)
    status = OK if accuracy >= MIN_DEMO_ACCURACY and not errors else FAIL
    failed = f", {len(errors)} failed (first: {errors[0]})" if errors else ""
    return Row("accuracy", status, f"top-1 {accuracy:.3f} on {len(held_out)} held-out images (at least "
               f"{MIN_DEMO_ACCURACY}){failed}")


def load_rows(url: str, bundle: Bundle, layout: Layout, concurrencies: tuple[int, ...], seconds: float) -> Iterator[Row]:
    import numpy as np

    from client.images import prepare
    from loadtest.loop import closed_loop

    images = [prepare(path, index) for index, path in enumerate(
        [path for _, path in heldout_images(layout.heldout)][:64] or bundle.warmup_images)]
    names = bundle.ensemble_tensors
    closed_loop("grpc", url, bundle.ensemble.name, names, images, 2, 1.0)  # connections and caches warm
    for concurrency in concurrencies:
        run = closed_loop("grpc", url, bundle.ensemble.name, names, images, concurrency, seconds)
        latencies = np.asarray(run.latencies_ms or [float("nan")])
        failed = f", {run.failures} failed (first: {run.first_failure})" if run.failures else ""
        yield Row(f"load c={concurrency}", FAIL if run.failures or not run.latencies_ms else OK,
                  f"{run.requests_per_s:.1f} req/s, p50 {np.percentile(latencies, 50):.1f} ms, p99 "
                  f"{np.percentile(latencies, 99):.1f} ms over {seconds:g} s (gRPC, one image per request){failed}")


def verify(layout: Layout, flavor: str, url: str, doctor: Doctor | None, concurrencies: tuple[int, ...] = CONCURRENCIES,
           seconds: float = SECONDS, progress: Callable[[str], None] = print) -> list[Row]:
    rows = []
    if doctor is not None:
        progress("doctor ...")
        checks = doctor.run()
        failed = [check.check for check in checks if check.status == FAIL]
        warned = [check.check for check in checks if check.status == WARN]
        summary = format_checks(checks).splitlines()[-1].removeprefix("doctor: ")
        named = "".join(f"; {label}: {', '.join(names)}" for label, names in (("failed", failed), ("warnings", warned)) if names)
        rows.append(Row("doctor", FAIL if failed else WARN if warned else OK, summary + named))
    try:
        bundle = load_bundle(layout.repository if flavor == GPU else layout.flavor(flavor))
    except ConfigError as exc:
        return [*rows, Row("repository", FAIL, str(exc))]
    rows.append(engine_row(bundle, flavor))
    progress(f"the server at {url} ...")
    rows.extend(server_rows(url, flavor))
    if next(row for row in rows if row.item == "server").status == FAIL:  # not there, or not ready
        return rows
    progress("held-out accuracy through the ensemble ...")
    rows.append(accuracy_row(url, layout, bundle.ensemble.name))
    progress(f"load at concurrency {', '.join(map(str, concurrencies))} ({seconds:g} s each) ...")
    rows.extend(load_rows(url, bundle, layout, concurrencies, seconds))
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = [f"{row.status:<5} {row.item:<12} {row.value}" for row in rows]
    failed = sum(row.status == FAIL for row in rows)
    lines.append(f"verify: {len(rows)} rows, {failed} failed")
    return "\n".join(lines)


def default_url(flavor: str, doctor: Doctor) -> str:
    """Where the server listens: as .env publishes it on the GPU box, as `make serve` does elsewhere."""
    return (doctor.endpoint() if flavor == GPU else defaults.Endpoint.from_env()).grpc_url

