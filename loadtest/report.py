"""The end of a run: the server's view (Triton's metrics endpoint, scraped at the start and the end),
the SLO verdict, and a summary that puts the load generator's view beside the server's.

Takes Prometheus text and Locust stats; returns plain data (summary dict, verdict line). No Locust
event wiring here (see locustfile.py), so every piece is testable on its own.
"""

from __future__ import annotations

import dataclasses
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# Triton's per-model counters (cumulative since start; durations in microseconds).
COUNTERS = {
    "nv_inference_request_success": "requests",
    "nv_inference_request_failure": "failures",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_us",
    "nv_inference_request_duration_us": "request_us",
}
SATURATED_CPU_PERCENT = 90.0


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def per_model(text: str) -> dict[str, dict[str, float]]:
    """{model: {requests, failures, inferences, executions, queue_us, compute_us, request_us}} summed over versions."""
    models: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = COUNTERS.get(sample.name) or COUNTERS.get(sample.name.removesuffix("_total"))
            model = sample.labels.get("model")
            if key and model:
                totals = models.setdefault(model, dict.fromkeys(COUNTERS.values(), 0.0))
                totals[key] += sample.value
    return models


def server_view(before: str, after: str) -> dict[str, dict[str, float]]:
    """Per model over the run: requests, failures, mean batch size, mean queue and compute time (ms)."""
    start, end = per_model(before), per_model(after)
    view = {}
    for model, totals in end.items():
        delta = {key: value - start.get(model, {}).get(key, 0.0) for key, value in totals.items()}
        requests = delta["requests"]
        if requests <= 0 and delta["failures"] <= 0:
            continue
        view[model] = {
            "requests": int(requests),
            "failures": int(delta["failures"]),
            "mean_batch": delta["inferences"] / delta["executions"] if delta["executions"] else 0.0,
            "queue_ms": delta["queue_us"] / requests / 1000 if requests else 0.0,
            "compute_ms": delta["compute_us"] / requests / 1000 if requests else 0.0,
            "request_ms": delta["request_us"] / requests / 1000 if requests else 0.0,
        }
    return view


@dataclasses.dataclass(frozen=True)
class Slo:
    p95_ms: float | None = None
    p99_ms: float | None = None
    error_rate: float | None = None

    def verdict(self, p95_ms: float, p99_ms: float, error_rate: float, requests: int) -> tuple[bool, str]:
        """(passed, a one-line verdict) for the measured values."""
        checks = [("p95", p95_ms, self.p95_ms, "ms"), ("p99", p99_ms, self.p99_ms, "ms"),
                  ("error rate", error_rate * 100, None if self.error_rate is None else self.error_rate * 100, "%")]
        parts, passed = [], requests > 0
        for name, value, limit, unit in checks:
            if limit is None:
                continue
            ok = value <= limit
            passed &= ok
            parts.append(f"{name} {value:.1f}{unit} {'<=' if ok else '>'} {limit:g}{unit}")
        if not parts:
            return passed, f"SLO: none set ({requests} requests)"
        if requests == 0:
            parts.append("no request completed")
        return passed, f"SLO {'PASS' if passed else 'FAIL'}: " + ", ".join(parts)


def format_summary(summary: dict) -> str:
    client = summary["client"]
    lines = [f"load generator: {client['requests']} requests, {client['failures']} failures, "
             f"{client['rps']:.1f} req/s, p50 {client['p50_ms']:.1f} ms, p95 {client['p95_ms']:.1f} ms, "
             f"p99 {client['p99_ms']:.1f} ms, CPU {client['cpu_percent']:.0f}% of a core"]
    if summary.get("server"):
        lines.append(f"{'server (Triton metrics)':<24} {'requests':>9} {'failures':>9} {'batch':>6} {'queue ms':>9} "
                     f"{'compute ms':>11}")
        for model, row in sorted(summary["server"].items()):
            lines.append(f"  {model:<22} {row['requests']:>9} {row['failures']:>9} {row['mean_batch']:>6.2f} "
                         f"{row['queue_ms']:>9.2f} {row['compute_ms']:>11.2f}")
    elif summary.get("server_error"):
        lines.append(f"server view unavailable: {summary['server_error']}")
    if summary["saturated"]:
        lines.append(f"WARNING: the load generator saturated (CPU {client['cpu_percent']:.0f}% of a core, limit "
                     f"{SATURATED_CPU_PERCENT:.0f}%): its rates and latencies measure itself, not the server; add workers")
    lines.append(summary["verdict"])
    return "\n".join(lines)
