"""Bench: what serving costs, measured side by side in one run (`make bench`).

For the demo model and a ResNet-50-sized classifier (random weights, 224x224), on 640x480 JPEGs:
1. in-process baseline: the same CPU DALI pipeline and ONNX Runtime session in one process, per batch size;
2. served: the ensemble through the real local Triton, in the local flavor and (where `make backends`
   builds) the cpu flavor, gRPC and HTTP, at several concurrencies;
3. dynamic batching off (a config variant generated in code) vs on;
4. stage costs from Triton's statistics API (preprocessing, model, ensemble);
5. the full local build from scratch (demo model).
Writes a table to stdout, a CSV and a PNG under build/bench/, and ends with one `summary:` line.
Client and server share this machine's cores: compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest.loop import closed_loop
from scripts import adopt, demo, export
from scripts.backends import BackendBuildError
from scripts.build import Builder
from scripts.config import load_bundle, read_config, write_config
from scripts.constants import CONFIG_FILENAME, CPU, DEMO_MODEL, GENERATED_FLAVORS, LOCAL
from scripts.dali_runner import synchronous_pipeline
from scripts.layout import Layout
from scripts.serve import LocalServer, local_server

PAIRED_IN_PROCESS, PAIRED_SERVED = "in-process, paired", "served, paired"  # the modes of paired()'s rows
RESNET50 = "resnet50"  # the compute-bound model's name in the results
RESNET_LABELS = 1000
RESNET_SIZE = 224


@dataclasses.dataclass
class Row:
    model: str
    flavor: str  # "local", "cpu"; "-" in process
    mode: str  # "in-process", "served", "served, no batching", "served, no check", or paired (PAIRED_*)
    protocol: str
    concurrency: int  # batch size for in-process
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    failures: int = 0
    round: int = 0  # the round of a paired measurement (0: a sweep)


def percentiles(latencies_ms: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return float(p50), float(p95), float(p99)


# -- 1. in process -------------------------------------------------------------------------------
class InProcess:
    """The served computation without a server: DALI (CPU) + ONNX Runtime in this process, batch by batch."""

    def __init__(self, layout: Layout, images: list[bytes]):
        import onnxruntime as ort

        self.spec = load_bundle(layout.repository)
        self.session = ort.InferenceSession(str(layout.onnx), providers=["CPUExecutionProvider"])
        self.serialized, self.images, self.pipelines = layout.dali_cpu.read_bytes(), images, {}

    def batch_sizes(self) -> tuple[int, ...]:
        return (1, 8, self.spec.preprocess.max_batch_size)

    def concurrencies(self) -> tuple[int, ...]:
        """The served sweep's default: a few loads, up to as many images in flight as the largest batch here.
        With fewer, the server cannot form the batches this side runs: on the demo (local flavor) the
        preprocessing's mean batch was 3.5 images at 16 clients and 6.4 at 32 (statistics API)."""
        return tuple(sorted({1, 4, 16, self.batch_sizes()[-1]}))

    def run(self, batch: int, seconds: float) -> tuple[float, list[float]]:
        """Images/s and the latency (ms) of each batch, for `seconds`."""
        if batch not in self.pipelines:
            self.pipelines[batch] = synchronous_pipeline(self.serialized, batch)
        pipeline, spec = self.pipelines[batch], self.spec
        latencies, done, start = [], 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            chunk = [np.frombuffer(self.images[(done + i) % len(self.images)], np.uint8) for i in range(batch)]
            began = time.perf_counter()
            pipeline.feed_input(spec.preprocess.input_name, chunk)
            (pixels,) = pipeline.run()
            self.session.run([spec.classifier.output_name], {spec.classifier.input_name: pixels.as_array()})
            latencies.append((time.perf_counter() - began) * 1000)
            done += batch
        return done / (time.perf_counter() - start), latencies


def in_process(model: str, runner: InProcess, seconds: float) -> list[Row]:
    rows = []
    for batch in runner.batch_sizes():
        rate, latencies = runner.run(batch, seconds)
        rows.append(Row(model, "-", "in-process", "-", batch, rate, *percentiles(latencies)))
    return rows


# -- 2./3. served --------------------------------------------------------------------------------
def stage_costs(server: LocalServer, names: list[str]) -> dict[str, float]:
    """Mean compute (and queue) ms per request of each model, from the statistics API."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    costs = {}
    for name in names:
        stats = client.get_inference_statistics(name, headers=server.admin_headers)["model_stats"][0]["inference_stats"]
        count = stats["success"]["count"] or 1
        compute_ns = sum(stats[phase]["ns"] for phase in ("compute_input", "compute_infer", "compute_output"))
        costs[f"{name} compute ms"] = compute_ns / count / 1e6
        costs[f"{name} queue ms"] = stats["queue"]["ns"] / count / 1e6
    client.close()
    return costs


def camera_requests(images: list[bytes]):
    """`demo.camera_frames` as the closed loop's prepared images."""
    from client.images import PreparedImage

    return [PreparedImage(f"#{i}", data, "JPEG", *demo.CAMERA_FRAME) for i, data in enumerate(images)]


@contextlib.contextmanager
def driven(serving: Layout, repo: Path, images: list[bytes]):
    """The ensemble of `repo` on a local server (`serving`'s backends): yields the server, the bundle and
    run(protocol, concurrency, seconds), the closed loop every measurement shares, each protocol's
    connections warmed before its first run."""
    bundle = load_bundle(repo)
    names, prepared, warm = bundle.ensemble_tensors, camera_requests(images), set()
    with tempfile.TemporaryDirectory() as scratch, local_server(serving, repo, log_path=Path(scratch) / "server.log") as server:
        def run(protocol: str, concurrency: int, seconds: float):
            url = server.grpc_url if protocol == "grpc" else server.http_url
            if protocol not in warm:
                closed_loop(protocol, url, bundle.ensemble.name, names, prepared, 2, 1.0)
                warm.add(protocol)
            return closed_loop(protocol, url, bundle.ensemble.name, names, prepared, concurrency, seconds)
        yield server, bundle, run


def served(model: str, flavor: str, serving: Layout, repo: Path, images: list[bytes], concurrencies: list[int],
           seconds: float, mode: str, protocols: tuple[str, ...]) -> tuple[list[Row], dict[str, float]]:
    """The ensemble of `repo` at each concurrency, with the same loop for every flavor, and its stage costs."""
    rows = []
    with driven(serving, repo, images) as (server, bundle, run):
        for protocol in protocols:
            for concurrency in concurrencies:
                result = run(protocol, concurrency, seconds)
                rows.append(Row(model, flavor, mode, protocol, concurrency, result.requests_per_s,
                                *percentiles(result.latencies_ms), result.failures))
        costs = stage_costs(server, [name for name in bundle.configs if name != bundle.ensemble.name] + [bundle.ensemble.name])
    return rows, costs


def paired(model: str, runner: InProcess, serving: Layout, repo: Path, batch: int, concurrency: int, seconds: float,
           rounds: int) -> list[Row]:
    """The best in-process batch and the best served concurrency (gRPC), measured alternately `rounds` times with
    the server up: a slow spell of this shared machine then hits both sides of a round alike, which the sweeps,
    minutes apart, cannot promise. The summary's served-vs-in-process ratios are the median of these rounds."""
    rows = []
    with driven(serving, repo, runner.images) as (_, _, run):
        for round_ in range(1, rounds + 1):
            rate, latencies = runner.run(batch, seconds)
            rows.append(Row(model, "-", PAIRED_IN_PROCESS, "-", batch, rate, *percentiles(latencies), round=round_))
            result = run("grpc", concurrency, seconds)
            rows.append(Row(model, LOCAL, PAIRED_SERVED, "grpc", concurrency, result.requests_per_s,
                            *percentiles(result.latencies_ms), result.failures, round=round_))
    return rows


def without_batching(source: Path, target: Path) -> Path:
    """A copy of a flavor repository with dynamic batching removed from every model (configs via protobuf)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    for path in target.glob(f"*/{CONFIG_FILENAME}"):
        config = read_config(path)
        config.ClearField("dynamic_batching")
        write_config(config, path, "bench variant: dynamic batching off")
    return target


def without_image_check(source: Path, target: Path) -> Path:
    """A copy of a flavor repository whose ensemble hands the images straight to the preprocessing, as
    before the image check (configs via protobuf)."""
    bundle = load_bundle(source)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    ensemble = read_config(target / bundle.ensemble.name / CONFIG_FILENAME)
    steps = [step for step in ensemble.ensemble_scheduling.step if step.model_name != bundle.check.model_name]
    for step in steps:
        if step.model_name == bundle.preprocess.model_name:
            step.input_map[bundle.preprocess.input_name] = bundle.ensemble.input[0].name
    del ensemble.ensemble_scheduling.step[:]
    ensemble.ensemble_scheduling.step.extend(steps)
    write_config(ensemble, target / bundle.ensemble.name / CONFIG_FILENAME, "bench variant: no image check")
    shutil.rmtree(target / bundle.check.model_name)
    return target


# -- the ResNet-50-sized model -------------------------------------------------------------------
def resnet50(num_classes: int):
    """ResNet-50 (bottleneck blocks 3-4-6-3), random weights: the compute-bound case."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int):
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(blocks):
            layers.append(Bottleneck(cin, width, stride if index == 0 else 1))
            cin = width * 4
    torch.manual_seed(0)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes), nn.Softmax(dim=1)).eval()


def resnet_layout(directory: Path, progress) -> tuple[Layout, Path]:
    """The committed repository adopted to the ResNet-50-sized model (224x224, 1000 classes) the way a user
    adopts theirs (`adopt`), and the model's ONNX file."""
    repository = directory / "model_repository"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(Layout().repository, repository)
    layout = Layout(repository, directory / "build")
    onnx_file = directory / "resnet50_random.onnx"
    if not onnx_file.exists():
        progress("exporting the ResNet-50-sized model ...")
        spec = dataclasses.replace(load_bundle(repository).classifier, input_dims=(3, RESNET_SIZE, RESNET_SIZE))
        export.export(resnet50(RESNET_LABELS), spec, onnx_file)
    labels = directory / "labels.txt"
    labels.write_text("".join(f"class_{i}\n" for i in range(RESNET_LABELS)))
    adopt.write(adopt.plan(layout, onnx_file, labels), layout)
    return layout, onnx_file


def prepare_models(models: list[str], progress) -> dict[str, Layout]:
    layouts = {DEMO_MODEL: Layout()}
    Builder(layouts[DEMO_MODEL], progress=lambda m: None).run()
    if RESNET50 not in models:
        return layouts
    layout, onnx_file = resnet_layout(layouts[DEMO_MODEL].bench / RESNET50, progress)
    Builder(layout, model=str(onnx_file), progress=lambda m: None).run()
    layouts[RESNET50] = layout
    return layouts


def available_flavors(flavors: list[str], serving: Layout, progress) -> list[str]:
    """The flavors this machine can serve: the cpu flavor needs Triton's backends built (`make backends`)."""
    if CPU not in flavors:
        return flavors
    try:
        Builder(serving, progress=lambda m: None).run(only=("backends",))
    except BackendBuildError as exc:
        progress(f"leaving out the cpu flavor: {exc}")
        return [flavor for flavor in flavors if flavor != CPU]
    return flavors


def build_from_scratch() -> float:
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        Builder(Layout(build_dir=Path(scratch)), progress=lambda m: None).run((LOCAL,))
        return time.perf_counter() - started


# -- report --------------------------------------------------------------------------------------
def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({(r.model, r.flavor, r.mode, r.protocol) for r in rows if r.round == 0 and r.mode != "in-process"}):
        points = sorted((r.concurrency, r.images_per_s, r.p95_ms) for r in rows if (r.model, r.flavor, r.mode, r.protocol) == key)
        label = f"{key[0]} {key[1]} {key[3]}" + (" (no batching)" if "no batching" in key[2] else "")
        throughput.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        latency.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=label)
    for axis, title in ((throughput, "images/s"), (latency, "p95 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")  # both models on one chart: they differ by 30x
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    throughput.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def summary(rows: list[Row], flavors: list[str], build_s: float) -> str:
    """The one-line summary. Its figures are the local flavor's (comparable across runs and machines), cpu beside
    it. Served vs in-process: the median ratio of the paired rounds where they were measured, else the best served
    rate (gRPC) over the best in-process rate of the sweeps."""
    main_flavor = LOCAL if LOCAL in flavors else flavors[0]

    def pick(mode, protocol, concurrency=None, model=DEMO_MODEL, flavor=main_flavor):
        return [r for r in rows if (r.model, r.mode, r.protocol) == (model, mode, protocol)
                and r.flavor in (flavor, "-") and (concurrency is None or r.concurrency == concurrency)]

    def served_vs_inprocess(model: str) -> float:
        rounds = zip(pick(PAIRED_IN_PROCESS, "-", model=model), pick(PAIRED_SERVED, "grpc", model=model, flavor=LOCAL),
                     strict=True)
        ratios = [served.images_per_s / alone.images_per_s for alone, served in rounds]
        if ratios:
            return statistics.median(ratios)
        return (max(r.images_per_s for r in pick("served", "grpc", model=model))
                / max(r.images_per_s for r in pick("in-process", "-", model=model)))

    grpc = pick("served", "grpc")
    best = max(r.images_per_s for r in grpc)
    by_conc = {r.concurrency: r for r in grpc}
    gain = by_conc[max(by_conc)].images_per_s / by_conc[min(by_conc)].images_per_s
    overhead = by_conc[min(by_conc)].p50_ms - pick("in-process", "-", 1)[0].p50_ms
    unchecked = {r.concurrency: r for r in pick("served, no check", "grpc")}
    check_cost = 1 - best / max(r.images_per_s for r in unchecked.values())
    check_p50_ms = by_conc[min(by_conc)].p50_ms - unchecked[min(unchecked)].p50_ms
    line = f"summary: served_vs_inprocess={served_vs_inprocess(DEMO_MODEL):.2f}"
    if pick("served", "grpc", model=RESNET50):
        line += f" served_vs_inprocess_resnet50={served_vs_inprocess(RESNET50):.2f}"
    line += (f" batching_gain={gain:.2f} p50_overhead_ms={overhead:.2f} check_cost_pct={100 * check_cost:.1f} "
             f"check_p50_ms={check_p50_ms:.2f} build_s={build_s:.1f}")
    if CPU in flavors and LOCAL in flavors:
        line += f" cpu_vs_local={max(r.images_per_s for r in pick('served', 'grpc', flavor=CPU)) / best:.2f}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+",
                        help="served closed-loop clients (default: 1 4 16 and the model's max_batch_size, the largest "
                             "in-process batch)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement (default: %(default)s)")
    parser.add_argument("--images", type=int, default=64, help="distinct 640x480 JPEGs (default: %(default)s)")
    # Five: one round on this shared 2-core machine swings by 15% either way (docs/performance.md has every
    # round), and the median of three still moved by 0.08 between runs of one commit.
    parser.add_argument("--rounds", type=int, default=5,
                        help="paired rounds of the best in-process batch and the best served concurrency, for the "
                             "summary's ratios (default: %(default)s; 0: ratios of the sweeps' best rates)")
    parser.add_argument("--skip-build-time", action="store_true", help="do not time a build from scratch")
    parser.add_argument("--models", nargs="+", choices=[DEMO_MODEL, RESNET50], default=[DEMO_MODEL, RESNET50],
                        help="default: both")
    parser.add_argument("--flavors", nargs="+", choices=GENERATED_FLAVORS, default=list(GENERATED_FLAVORS),
                        help="served flavors (default: both; cpu builds Triton's backends first, or is left out when "
                             "this machine cannot)")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = Layout().bench
    results.mkdir(parents=True, exist_ok=True)
    images = demo.camera_frames(args.images)
    progress("building the demo and the ResNet-50-sized repositories ...")
    layouts = prepare_models(args.models, progress)
    serving = layouts[DEMO_MODEL]  # one backend directory serves every model's repositories
    flavors = available_flavors(args.flavors, serving, progress)
    rows: list[Row] = []
    costs: dict[tuple[str, str], dict[str, float]] = {}
    for model, layout in layouts.items():
        progress(f"{model}: in process ...")
        runner = InProcess(layout, images)
        rows += in_process(model, runner, args.seconds)
        concurrencies = args.concurrency or list(runner.concurrencies())
        for flavor in flavors:
            progress(f"{model}: served, {flavor} flavor ...")
            served_rows, costs[model, flavor] = served(model, flavor, serving, layout.flavor(flavor), images, concurrencies,
                                                       args.seconds, "served", ("grpc", "http"))
            rows += served_rows
            progress(f"{model}: served, {flavor} flavor, without dynamic batching ...")
            variant = without_batching(layout.flavor(flavor), results / f"{model}-{flavor}-no-batching")
            rows += served(model, flavor, serving, variant, images, concurrencies, args.seconds, "served, no batching",
                           ("grpc",))[0]
            progress(f"{model}: served, {flavor} flavor, without the image check ...")
            variant = without_image_check(layout.flavor(flavor), results / f"{model}-{flavor}-no-check")
            rows += served(model, flavor, serving, variant, images, concurrencies, args.seconds, "served, no check",
                           ("grpc",))[0]
        if LOCAL in flavors and args.rounds:
            batch = max((r for r in rows if (r.model, r.mode) == (model, "in-process")), key=lambda r: r.images_per_s)
            best = max((r for r in rows if (r.model, r.flavor, r.mode, r.protocol) == (model, LOCAL, "served", "grpc")),
                       key=lambda r: r.images_per_s)
            progress(f"{model}: in process (batch {batch.concurrency}) and served (local, {best.concurrency} clients), "
                     f"alternately, {args.rounds} rounds ...")
            rows += paired(model, runner, serving, layout.flavor(LOCAL), batch.concurrency, best.concurrency, args.seconds,
                           args.rounds)
    build_s = float("nan") if args.skip_build_time else build_from_scratch()

    with open(results / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in dataclasses.fields(Row)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in rows)
    plot(rows, results / "throughput_latency.png")

    print(f"{'model':<9} {'flavor':<6} {'mode (round)':<23} {'proto':<5} {'conc/batch':>10} {'images/s':>9} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'failed':>6}")
    for r in rows:
        mode = f"{r.mode} ({r.round})" if r.round else r.mode
        print(f"{r.model:<9} {r.flavor:<6} {mode:<23} {r.protocol:<5} {r.concurrency:>10} {r.images_per_s:>9.1f} "
              f"{r.p50_ms:>8.2f} {r.p95_ms:>8.2f} {r.p99_ms:>8.2f} {r.failures:>6}")
    for (model, flavor), model_costs in costs.items():
        listed = ", ".join(f"{k} {v:.2f}" for k, v in model_costs.items())
        print(f"stage costs ({model}, {flavor} flavor, served runs): {listed}")
    print(f"build from scratch (demo, local flavor): {build_s:.1f} s")
    print(f"results: {results / 'results.csv'}, {results / 'throughput_latency.png'}")

    print(summary(rows, flavors, build_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
