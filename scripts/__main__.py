"""Command line: `python -m scripts adopt|build|serve|validate|diff|apply|doctor|verify|k8s-check|monitor|soak|tune|engine|
gpu-files --help`.

Exit codes: 0 success, 1 the build or the server failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from client import defaults
from scripts.config import ConfigError
from scripts.constants import (
    CPU,
    DALI_PIPELINE,
    DEFAULT_PRECISION,
    DEMO_MODEL,
    FLAVORS,
    GENERATED_FLAVORS,
    GPU,
    PRECISION_ENV,
    PRECISIONS,
    SERVED_FLAVOR,
    TENSORRT_PLAN,
)
from scripts.layout import Layout

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT = Layout()
ADMIN_KEY_HELP = f"default: ${defaults.ADMIN_KEY_ENV}, or the file ${defaults.ADMIN_KEY_FILE_ENV} names"


def _add_layout_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=DEFAULT.repository,
                        help="the committed model repository (source of truth; default: %(default)s)")
    parser.add_argument("--build-dir", type=Path, default=DEFAULT.build_dir,
                        help="where artifacts and generated flavors go (default: %(default)s)")


def _add_host_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", type=Path, default=None, help="the Compose .env (default: the project's)")
    parser.add_argument("--admin-key-file", type=Path, default=None,
                        help="the admin key Compose mounts (default: secrets/triton_admin_key)")


def _layout(args: argparse.Namespace) -> Layout:
    return Layout(args.repository, args.build_dir)


def _stage_names() -> list[str]:
    from scripts.build import STAGES

    return [stage.name for stage in STAGES]


def _stages_help() -> str:
    from scripts.build import STAGES

    lines = [f"  {number}. {stage.name:<9} {stage.does}" + (" *" if stage.on_request else "")
             for number, stage in enumerate(STAGES, start=1)]
    return "Stages, each skipped when its inputs did not change (* only on request):\n" + "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    adopt = commands.add_parser(
        "adopt", help="fit the committed configs to your model and labels (diff first, --yes to write)",
        description="Look at MODEL (ONNX: its input and output shapes; torch: a trial forward pass at --input-size), "
                    "edit the values of the committed configs that depend on it where they stand (comments and layout "
                    "kept): crop size, resize, normalization, number of scores; write labels.txt; validate; record the "
                    "model for the build. Shows the diff and writes nothing without --yes. Exit codes: 0 shown or "
                    "written, 1 the model does not fit (the message says why and what to do), 2 usage or config error.")
    _add_layout_options(adopt)
    adopt.add_argument("model", type=Path, help="ONNX, TorchScript, or a pickled torch.nn.Module (torch.save(model))")
    adopt.add_argument("--labels", type=Path, help="one label per line, in the order of the model's scores "
                                                    "(default: keep labels.txt; its count must match)")
    adopt.add_argument("--input-size", metavar="N|HxW", help="the image size the model takes (needed for torch "
                                                             "models; an ONNX model's own size is read from it)")
    adopt.add_argument("--resize-shorter", type=int, metavar="N",
                       help="resize the shorter side to N before the center crop (default: kept for the same crop, "
                            "else crop x 256/224, ImageNet's convention)")
    adopt.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                       help="per-channel mean on the 0..1 scale (default: keep the config's)")
    adopt.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                       help="per-channel standard deviation on the 0..1 scale (default: keep the config's)")
    adopt.add_argument("--code", action="append", type=Path, default=[], metavar="DIR",
                       help="a folder with the Python code of a pickled model's classes (repeatable; the build reuses it)")
    adopt.add_argument("--yes", action="store_true", help="write the edits (default: show them only)")
    adopt.add_argument("--json", action="store_true", help="print the plan and the full diff as JSON")

    build = commands.add_parser("build", help="build artifacts and the cpu/local repositories",
                                description="Build the artifacts and the generated repositories.\n\n" + _stages_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_layout_options(build)
    build.add_argument("--model", default=None,
                       help=f"a model file: ONNX, TorchScript, or a pickled torch.nn.Module (torch.save(model)); or "
                            f"'{DEMO_MODEL}' (train the built-in demo model). Default: the model `adopt` recorded, else the demo")
    build.add_argument("--code", action="append", type=Path, default=[], metavar="DIR",
                       help="a folder with the Python code of a pickled model's classes (repeatable)")
    build.add_argument("--flavor", choices=[*GENERATED_FLAVORS, "all"], default="all",
                       help="which repositories to generate (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild every stage (with --only: those stages)")
    build.add_argument("--only", nargs="+", choices=_stage_names(), metavar="STAGE",
                       help="run just these stages, on what earlier runs built (default: all, in order)")
    build.add_argument("--with", dest="also", nargs="+", choices=_stage_names(), metavar="STAGE", default=[],
                       help="also run these on-request stages (backends: what `make backends` builds)")
    build.add_argument("--json", action="store_true", help="print a JSON summary on stdout (progress goes to stderr)")

    ports = "/".join(str(p) for p in defaults.DEFAULT_PORTS.values())
    serve = commands.add_parser("serve", help="run tritonserver on the local repository until Ctrl-C",
                                description="Serve the local flavor with the tritonserver from nvidia-pytriton. "
                                            f"Ports: {', '.join(defaults.PORT_ENV.values())} (default {ports}). "
                                            f"Bind address: {defaults.ADDRESS_ENV} (default {defaults.DEFAULT_ADDRESS}). "
                                            f"Admin APIs need the header {defaults.ADMIN_HEADER}: "
                                            f"${defaults.ADMIN_KEY_ENV} (random when unset).")
    _add_layout_options(serve)
    serve.add_argument("--flavor", choices=GENERATED_FLAVORS, default=SERVED_FLAVOR,
                       help=f"which generated repository to serve (default: %(default)s; {CPU}: Triton's DALI and ONNX "
                            "Runtime backends, built by `make backends`)")
    serve.add_argument("--log-file", type=Path, default=None,
                       help="server log (default: <build-dir>/logs/tritonserver.log)")
    validate = commands.add_parser("validate", help="check a model repository's configs and artifacts",
                                   description="Check a model repository for the mistakes Triton would only report at load "
                                               "time. Exit codes: 0 clean, 1 errors (or warnings with --strict), 2 usage.")
    validate.add_argument("repository", nargs="?", type=Path, default=DEFAULT.repository,
                          help="the repository to check (default: %(default)s); also works on build/repos/<flavor>")
    validate.add_argument("--flavor", choices=FLAVORS,
                          help=f"the flavor the repository is for (default: what generated configs declare, else {GPU})")
    validate.add_argument("--strict", action="store_true", help="warnings fail too")
    validate.add_argument("--require-artifacts", action="store_true",
                          help="a missing model.plan/model.onnx/model.dali/model.py is an error (use right before serving)")
    validate.add_argument("--triton-only", action="store_true",
                          help="check only what Triton requires, not this bundle's rules (a repository of other models)")
    validate.add_argument("--quiet", action="store_true", help="leave out notes")
    validate.add_argument("--json", action="store_true", help="print the report as JSON")

    engine = commands.add_parser("engine", help="build the TensorRT plan of the gpu flavor (GPU box)",
                                 description="Build model_repository/<classifier>/1/model.plan from the ONNX export, with "
                                             "an optimization profile from the classifier config, a timing cache, an "
                                             "accuracy gate against ONNX Runtime, and metadata beside the plan. Skipped "
                                             "when the metadata matches. Needs TensorRT and a GPU (the compose builder).")
    _add_layout_options(engine)
    engine.add_argument("--precision", choices=PRECISIONS, default=os.environ.get(PRECISION_ENV) or DEFAULT_PRECISION,
                        help=f"default: ${PRECISION_ENV} or {DEFAULT_PRECISION}")
    engine.add_argument("--timing-cache-dir", type=Path, default=None,
                        help="default: <build-dir>/trt (one cache file per TensorRT version and GPU architecture)")
    engine.add_argument("--force", action="store_true", help="rebuild even when the metadata matches")
    engine.add_argument("--print-trtexec", action="store_true",
                        help="print the equivalent trtexec command and exit (for fp16, after writing the FP16 model it builds)")
    engine.add_argument("--json", action="store_true", help="print the engine metadata as JSON")

    gpu_files = commands.add_parser("gpu-files", help="write the files of the gpu flavor's DALI and python models",
                                    description="Write into <repository>: the preprocessing model's dali.py (and the "
                                                "graph module it imports), the nvJPEG pipeline with the config's values, "
                                                "which the DALI backend serializes with the server's own DALI when it "
                                                "loads the model; and the image check's model.py with its helper. Needs no "
                                                "DALI and no GPU here (the compose builder runs it).")
    _add_layout_options(gpu_files)

    apply = commands.add_parser("apply", help="put an edited model_repository/ live on a running server, or roll back",
                                description="Rebuild what the edit invalidates, validate strictly, load the models that differ "
                                            "into the running server (explicit model control mode) through its repository "
                                            "API, verify, and roll back on failure. Exit codes: 0 applied or nothing to do, "
                                            "1 refused before anything changed, 2 server unreachable or admin key refused, "
                                            "3 rolled back. Every run is recorded in <build-dir>/apply/audit.jsonl.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_layout_options(apply)
    apply.add_argument("--flavor", choices=FLAVORS, default=SERVED_FLAVOR,
                       help=f"the repository the server runs (default: %(default)s; {GPU}: model_repository/ itself, "
                            "the GPU box)")
    apply.add_argument("--url", default=None,
                       help="the server's HTTP address (default: the one `make serve` uses, from the same environment)")
    apply.add_argument("--admin-key", default=None, help=ADMIN_KEY_HELP)
    apply.add_argument("--model", default=None, help="the model the rebuild exports (default: the one the last build used)")
    apply.add_argument("--expect-change", action="store_true",
                       help="the edit is meant to change results: a different top-1 on the smoke images is not a failure")
    apply.add_argument("--json", action="store_true", help="print the outcome as JSON (progress goes to stderr)")
    apply.add_argument("--mark-loaded", action="store_true",
                       help="only record the flavor's repository as what the server has loaded (where the server "
                            "starts on it: `make serve` does it itself, the compose builder for the gpu flavor)")

    doctor = commands.add_parser("doctor", help="check this host before `docker compose up` (Docker, GPU, .env, secrets)",
                                 description="Check the host for the GPU deployment: Docker Engine and Compose, the NVIDIA "
                                             "driver, GPUs and container toolkit, the pinned NGC release and its security "
                                             "bulletins, .env, free ports, the admin key, disk space and the model "
                                             "repository. Each check prints ok, warn or fail, and how to fix it. Exit "
                                             "codes: 0 nothing failed, 1 a check failed, 2 usage.")
    _add_layout_options(doctor)
    _add_host_options(doctor)
    doctor.add_argument("--json", action="store_true", help="print [{check, status, detail, fix}] as JSON")

    verify = commands.add_parser("verify", help="check a running deployment: one table to paste back when something is off",
                                 description="After `docker compose up` (or `make serve`): the doctor's summary, the "
                                             "engine's metadata, the Triton and DALI versions the server runs, held-out "
                                             "top-1 accuracy through the served ensemble, and throughput and latency at "
                                             "concurrency 1 and 16 with the project's client. Exit codes: 0 nothing "
                                             "failed, 1 a row failed, 2 usage.")
    _add_layout_options(verify)
    _add_host_options(verify)
    verify.add_argument("--flavor", choices=FLAVORS, default=GPU, help="the flavor the server runs (default: %(default)s)")
    verify.add_argument("--url", help="the server's gRPC host:port (default: as .env publishes it for the gpu flavor, "
                                      "as `make serve` listens for the others)")
    verify.add_argument("--seconds", type=float, default=None, help="of load at each concurrency (default: 5)")
    verify.add_argument("--no-doctor", action="store_true", help="leave the doctor's row out (a host other than the server's)")
    verify.add_argument("--json", action="store_true", help="print [{item, status, value}] as JSON")

    k8s = commands.add_parser("k8s-check", help="check the Helm chart offline (lint, render, schemas)",
                              description="Render helm/triton-bundle with its defaults and each ci/ values file into "
                                          "<build-dir>/k8s, run helm lint, validate every core object in strict mode "
                                          "against recent Kubernetes releases' schemas and the custom resources against "
                                          "their CRDs'. Exit codes: 0 valid, 1 not.")
    _add_layout_options(k8s)

    tune = commands.add_parser(
        "tune", help="search the serving knobs on a live server; the winner as a patch of the committed configs",
        description="Start the local flavor's server in explicit model control (or use a running one: --url, with its "
                    "admin key), try candidate configs on it without restarting (instances, queue delays, preferred "
                    "batch sizes, DALI and ONNX Runtime threads), each at several client concurrencies, by coordinate "
                    "descent from the committed values; write <build-dir>/tune/points.csv, tune.png and "
                    "recommended.diff (the committed configs' values edited in place, validated). The server is left "
                    "with the committed configs. Exit codes: 0 done, 1 failed, 2 usage error.")
    _add_layout_options(tune)
    tune.add_argument("--url", default=None,
                      help="HTTP host:port of a running server in explicit model control, e.g. the GPU box's "
                           "(default: start the local flavor's server here)")
    tune.add_argument("--grpc-url", default=None,
                      help=f"its gRPC host:port, which the load goes to (default: --url's host, port "
                           f"${defaults.PORT_ENV['grpc']} or {defaults.DEFAULT_PORTS['grpc']})")
    tune.add_argument("--admin-key", default=None, help=ADMIN_KEY_HELP)
    tune.add_argument("--flavor", choices=FLAVORS, default=None,
                      help=f"what the server at --url serves (default: {GPU}; without --url: {SERVED_FLAVOR})")
    tune.add_argument("--p99-ms", type=float, default=None,
                      help="the p99 latency budget (default: a multiple of the p99 measured at concurrency 1, "
                           "scripts/tune.py BUDGET_FACTOR)")
    tune.add_argument("--images", type=int, default=64, help="distinct camera-sized JPEGs sent (default: %(default)s)")
    tune.add_argument("--seconds", type=float, default=4.0, help="per concurrency and point (default: %(default)s)")
    tune.add_argument("--max-points", type=int, default=24, help="candidates to try at most (default: %(default)s)")
    tune.add_argument("--repeats", type=int, default=2, help="baseline runs, for the noise margin (default: %(default)s)")
    tune.add_argument("--write", action="store_true", help="apply recommended.diff to the committed configs")
    tune.add_argument("--json", action="store_true", help="print the outcome as JSON (progress goes to stderr)")

    monitor = commands.add_parser(
        "monitor", help="run Prometheus here, scraping the local server with the bundle's rules, until Ctrl-C",
        description="Start Prometheus (Debian: apt-get install prometheus) with monitoring/prometheus.yml pointed at the "
                    f"local server's metrics port (${defaults.PORT_ENV['metrics']}) and listening on 127.0.0.1 "
                    "($PROMETHEUS_PORT, default 9090); print its URL and the recording rules' current values. "
                    "Exit codes: 0 stopped with Ctrl-C, 1 Prometheus failed, 2 Prometheus not installed.")
    _add_layout_options(monitor)
    monitor.add_argument("--target", default=None,
                         help="host:port of Triton's metrics (default: the one `make serve` uses, from the same environment)")
    monitor.add_argument("--once", action="store_true", help="print the figures once Prometheus has scraped, then stop")

    soak = commands.add_parser("soak", help="mixed good and bad traffic for a long time, one crash: does the server hold up?",
                               description="Good traffic over gRPC and HTTP through the project's client, about 1%% bad "
                                           "images sent raw, the server's memory, file descriptors and threads sampled, "
                                           "and one SIGKILL and restart early in the run. Ends with a `soak:` line and "
                                           "writes soak.csv and soak.png. Exit codes: 0 the goals hold, 1 one does not, "
                                           "2 usage.")
    _add_layout_options(soak)
    target = soak.add_mutually_exclusive_group()
    target.add_argument("--flavor", choices=GENERATED_FLAVORS, default=SERVED_FLAVOR,
                        help="start a server of this flavor for the run (default: %(default)s)")
    target.add_argument("--url", help="soak a running server instead: its gRPC host:port (with --http-url)")
    soak.add_argument("--http-url", help="the running server's HTTP host:port (with --url)")
    soak.add_argument("--restart-cmd", help="with --url: the command that kills and restarts that server "
                                            "(e.g. 'docker compose kill -s KILL triton'); none: no restart")
    soak.add_argument("--pid", type=int, help="with --url: the server's process id here, to sample its memory")
    soak.add_argument("--seconds", type=float, default=None, help="how long (default: $SOAK_SECONDS, else 600)")
    soak.add_argument("--concurrency", type=int, default=8, help="clients, half gRPC, half HTTP (default: %(default)s)")
    soak.add_argument("--output", type=Path, default=None, help="where soak.csv and soak.png go (default: build/soak)")
    soak.add_argument("--json", action="store_true", help="print the figures as JSON after the line")

    diff = commands.add_parser("diff", help="compare committed configs with what a running server reports",
                               description="Show, for each model of the repository, the configured fields whose live value "
                                           "(GET /v2/models/<name>/config) differs. Exit codes: 0 same, 1 differences, 2 usage "
                                           "or connection error. The config API is an admin API: pass the key.")
    diff.add_argument("repository", nargs="?", type=Path, default=DEFAULT.flavor(SERVED_FLAVOR),
                      help="the repository the server was started on (default: %(default)s)")
    diff.add_argument("--url", default=None,
                      help="server HTTP address (default: the one `make serve` uses, from the same environment)")
    diff.add_argument("--admin-key", default=None, help=ADMIN_KEY_HELP)
    diff.add_argument("--json", action="store_true", help="print the differences as JSON")
    return parser


def _engine(args: argparse.Namespace) -> int:
    from scripts import engine
    from scripts.build import ALL_HELDOUT, Builder

    try:
        builder = Builder(_layout(args), progress=lambda m: None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    spec = builder.bundle.classifier
    plan = builder.bundle.artifact(spec.model_name, TENSORRT_PLAN)
    cache_dir = args.timing_cache_dir or builder.layout.trt_cache
    if not builder.layout.onnx.is_file():
        print(f"error: {builder.layout.onnx} not found: run `python -m scripts build` first", file=sys.stderr)
        return EXIT_USAGE
    if args.print_trtexec:
        typed = engine.typed_onnx_path(builder.layout.onnx, args.precision, cache_dir)
        try:
            if typed != builder.layout.onnx:
                engine.write_fp16_copy(builder.layout.onnx, typed)
        except engine.EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(" ".join(engine.trtexec_command(typed, plan, spec, cache_dir / "timing.cache")))
        return EXIT_OK
    progress_stream = sys.stderr if args.json else sys.stdout
    try:
        metadata = engine.build(builder.layout.onnx, plan, spec, args.precision, cache_dir,
                                builder.verification_inputs(rendered=ALL_HELDOUT), force=args.force,
                                progress=lambda m: print(m, file=progress_stream, flush=True))
    except engine.EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(metadata, indent=2))
    return EXIT_OK


def _gpu_files(args: argparse.Namespace) -> int:
    from scripts.repository import gpu_model_files
    from scripts.validate import checked_bundle

    try:
        bundle = checked_bundle(_layout(args).repository)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for target, text in gpu_model_files(bundle).items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"{target}: {len(text)} characters")
    # The DALI backend would load a serialized pipeline left by an older builder instead of dali.py.
    stale = bundle.artifact(bundle.preprocess.model_name, DALI_PIPELINE)
    for path in (stale, stale.with_name(stale.name + ".json")):
        if path.is_file():
            path.unlink()
            print(f"{path}: removed (the server loads dali.py)")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from scripts.validate import format_report, validate

    if not args.repository.is_dir():
        print(f"error: {args.repository}: no such folder", file=sys.stderr)
        return EXIT_USAGE
    report = validate(args.repository, flavor=args.flavor, require_artifacts=args.require_artifacts,
                      bundle_rules=not args.triton_only)
    if args.json:
        print(report.to_json())
    else:
        print("\n".join(format_report(report, notes=not args.quiet)))
    return EXIT_OK if report.ok(strict=args.strict) else EXIT_FAILED


def _diff(args: argparse.Namespace) -> int:
    from tritonclient.utils import InferenceServerException

    from scripts.validate import diff_live

    try:
        args.url = args.url or defaults.url("http")
        admin_key = args.admin_key or defaults.admin_key()
        headers = {defaults.admin_header("http"): admin_key} if admin_key else None
        differences = diff_live(args.repository, args.url, headers)
    except defaults.EnvironmentValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PermissionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (InferenceServerException, OSError) as exc:
        print(f"error: cannot reach the server at {args.url}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps([dataclasses.asdict(d) for d in differences], indent=2))
    else:
        for difference in differences:
            print(difference)
        print(f"{len(differences)} difference(s) between {args.repository} and the server at {args.url}")
    return EXIT_FAILED if differences else EXIT_OK


def _host_doctor(args: argparse.Namespace):
    from scripts import doctor

    return doctor.Doctor(args.env_file or doctor.ENV_FILE, args.admin_key_file or doctor.ADMIN_KEY_FILE, _layout(args))


def _report_rows(rows: list, as_json: bool, format_rows: Callable[[list], str], failed: str) -> int:
    """Print checks (the doctor's, verify's) as a table or JSON; exit code 1 when one has status `failed`."""
    print(json.dumps([dataclasses.asdict(row) for row in rows], indent=2) if as_json else format_rows(rows))
    return EXIT_FAILED if any(row.status == failed for row in rows) else EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    from scripts import doctor

    return _report_rows(_host_doctor(args).run(), args.json, doctor.format_checks, doctor.FAIL)


def _verify(args: argparse.Namespace) -> int:
    from scripts import verify

    host = _host_doctor(args)
    url = args.url or verify.default_url(args.flavor, host)
    progress = sys.stderr if args.json else sys.stdout
    rows = verify.verify(_layout(args), args.flavor, url, None if args.no_doctor else host,
                         seconds=verify.SECONDS if args.seconds is None else args.seconds,
                         progress=lambda message: print(message, file=progress, flush=True))
    return _report_rows(rows, args.json, verify.format_rows, verify.FAIL)


def _k8s_check(args: argparse.Namespace) -> int:
    from scripts import k8s

    try:
        k8s.check(_layout(args).build_dir / "k8s")
    except k8s.CheckFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _tune(args: argparse.Namespace) -> int:
    from scripts import demo, tune
    from scripts.backends import BackendBuildError
    from scripts.build import Builder, model_choice
    from scripts.config import load_bundle
    from scripts.config_text import unified_diff, write_edits
    from scripts.live import Refused, Unreachable
    from scripts.serve import ServerError, local_server

    layout = _layout(args)
    progress = (lambda message: print(message, file=sys.stderr, flush=True)) if args.json else print
    try:
        admin_key = args.admin_key or defaults.admin_key()
        grpc_url = args.grpc_url or (args.url and f"{args.url.rsplit(':', 1)[0]}:{defaults.Endpoint.from_env().grpc}")
    except defaults.EnvironmentValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    images = demo.camera_frames(args.images)
    try:
        choice = model_choice(layout)
        label = Path(choice.model).stem
        if args.url:
            bundle = load_bundle(layout.repository)
            outcome = tune.tune(tune.Target(args.url, grpc_url, admin_key), bundle, images, layout.tune,
                                args.flavor or GPU, args.p99_ms, args.seconds, args.max_points, args.repeats, label, progress)
        else:
            flavor = args.flavor or SERVED_FLAVOR
            if flavor == GPU:
                print(f"error: the {GPU} flavor runs on the GPU box: tune it there, or point --url at its server",
                      file=sys.stderr)
                return EXIT_USAGE
            Builder(layout, model=choice.model, code=choice.code, progress=lambda m: None).run(
                (flavor,), also=("backends",) if flavor == CPU else ())
            bundle = load_bundle(layout.repository)
            with local_server(layout, layout.flavor(flavor), log_path=layout.tune / "tritonserver.log",
                              model_control="explicit") as server:
                outcome = tune.tune(server, bundle, images, layout.tune, flavor, args.p99_ms, args.seconds,
                                    args.max_points, args.repeats, label, progress)
    except (ServerError, ConfigError, RuntimeError, Refused, Unreachable, BackendBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.write:
        write_edits(outcome.changes)
    diff = unified_diff(outcome.changes, layout.project)
    if args.json:
        print(json.dumps({"line": outcome.line(), "best": outcome.best_candidate, "tried": outcome.rows(), "diff": diff},
                         default=str))
    else:
        print(outcome.table())
        print(diff or "the committed values are the best found: no patch")
        print(f"wrote {layout.tune / 'points.csv'}, {layout.tune / 'tune.png'}, {layout.tune / 'recommended.diff'}"
              + (" and applied it" if args.write and outcome.changes else ""))
        print(outcome.line())
    return EXIT_OK


def _monitor(args: argparse.Namespace) -> int:
    import time

    from scripts import monitor

    try:
        endpoint = defaults.Endpoint.from_env()
        port = defaults.parse_port(monitor.PORT_ENV, os.environ.get(monitor.PORT_ENV) or str(monitor.DEFAULT_PORT))
        prometheus = monitor.LocalPrometheus(_layout(args).monitor, args.target or f"{endpoint.host}:{endpoint.metrics}", port)
        prometheus.start()
    except monitor.PrometheusMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (defaults.EnvironmentValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"prometheus: {prometheus.url} (scraping {prometheus.triton_target}; data in {prometheus.directory})")
    print(f"  alerts:  {prometheus.url}/alerts    rules: {prometheus.url}/rules    targets: {prometheus.url}/targets")
    try:
        while True:
            time.sleep(30)  # two scrapes at the config's 15 s: enough for a rate
            rates = prometheus.values("model:nv_inference_request_success:rate5m")
            up = prometheus.targets_up().get(monitor.TRITON_JOB)
            print(f"triton {'up' if up else 'DOWN'}; requests/s: "
                  + (", ".join(f"{model} {rate:.2f}" for model, rate in sorted(rates.items())) or "none yet"), flush=True)
            if args.once:
                return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        prometheus.stop()


def _soak(args: argparse.Namespace) -> int:
    from scripts import soak
    from scripts.serve import ServerError, local_server

    layout = _layout(args)
    if args.url and not args.http_url:
        print("error: --url needs --http-url too", file=sys.stderr)
        return EXIT_USAGE
    seconds = args.seconds if args.seconds is not None else soak.default_seconds()
    output = args.output or layout.soak
    progress = (lambda message: print(message, file=sys.stderr, flush=True)) if args.json else print
    try:
        if args.url:
            target = soak.Target(args.url, args.http_url, defaults.DEFAULT_MODEL, restart_cmd=args.restart_cmd, pid=args.pid)
            result = soak.run(target, layout, seconds, args.concurrency, output, progress)
        else:
            with local_server(layout, layout.flavor(args.flavor), log_path=output / "tritonserver.log") as server:
                target = soak.Target(server.grpc_url, server.http_url, defaults.DEFAULT_MODEL, local=server)
                result = soak.run(target, layout, seconds, args.concurrency, output, progress)
    except (ServerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(result.line())
    for label, first in (("first failed good request", result.first_good_failure),
                         ("first bad image not refused clearly", result.first_bad_surprise)):
        if first:
            print(f"{label}: {first}")
    print(f"wrote {output / 'soak.csv'} and {output / 'soak.png'}")
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
    return EXIT_OK if result.goals_met() else EXIT_FAILED


def _apply(args: argparse.Namespace) -> int:
    from scripts.apply import apply, mark_loaded

    if args.mark_loaded:
        print(f"recorded {mark_loaded(_layout(args), args.flavor)}")
        return EXIT_OK
    try:
        url = args.url or defaults.url("http")
        admin_key = args.admin_key or defaults.admin_key()
    except defaults.EnvironmentValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stream = sys.stderr if args.json else sys.stdout
    outcome = apply(_layout(args), args.flavor, url, admin_key, model=args.model, expect_change=args.expect_change,
                    progress=lambda message: print(message, file=stream, flush=True))
    if args.json:
        print(json.dumps(outcome.record(flavor=args.flavor, server=url), indent=2))
    print(outcome.summary(), file=stream, flush=True)
    return outcome.exit_code


def _adopt(args: argparse.Namespace) -> int:
    from scripts import adopt
    from scripts.intake import IntakeError

    layout = _layout(args)
    try:
        size = adopt.parse_size(args.input_size) if args.input_size else None
        plan = adopt.plan(layout, args.model, args.labels, size, args.resize_shorter, args.mean, args.std, tuple(args.code))
    except (adopt.AdoptError, IntakeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    project = layout.project
    record = adopt.write(plan, layout) if args.yes else None
    if args.json:
        print(json.dumps({
            "model": str(plan.model), "kind": plan.signature.kind, "input_size": plan.signature.size,
            "scores": plan.signature.scores, "resize_shorter": plan.resize_shorter, "labels": len(plan.labels),
            "files": [str(path) for path in plan.changes], "diff": plan.diff(project, labels_in_full=True),
            "written": args.yes, "record": str(record) if record else None,
        }, indent=2))
        return EXIT_OK
    print(plan.diff(project) or "the configs already fit this model")
    print(adopt.summary(plan))
    if record is None:
        print(f"nothing written: run again with --yes (make adopt ... ARGS=--yes) to write {len(plan.changes)} file(s)")
        return EXIT_OK
    print(f"written; the build will use this model (recorded in {record})")
    print("next: make serve" + ("" if plan.model.resolve().is_relative_to(project) else
                                 f"\nfor the GPU box's builder container, move {plan.model} (and any --code folder) "
                                 f"inside {project} and adopt it from there: the container sees only this folder"))
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    from scripts.backends import BackendBuildError
    from scripts.build import Builder, BuildError, model_choice
    from scripts.export import ExportError
    from scripts.intake import IntakeError

    progress_stream = sys.stderr if args.json else sys.stdout
    flavors = GENERATED_FLAVORS if args.flavor == "all" else (args.flavor,)
    try:
        choice = model_choice(_layout(args), args.model, tuple(map(str, args.code)))
        builder = Builder(_layout(args), model=choice.model, code=choice.code, force=args.force,
                          progress=lambda message: print(message, file=progress_stream, flush=True))
        results = builder.run(flavors, only=tuple(args.only) if args.only else None, also=tuple(args.also))
    except (ExportError, BuildError, BackendBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ConfigError, IntakeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({
            "flavors": {name: str(builder.layout.flavor(name)) for name in flavors},
            "stages": [dataclasses.asdict(result) for result in results],
        }, indent=2, default=str))
    else:
        print("build complete: " + ", ".join(f"{n}={builder.layout.flavor(n)}" for n in flavors))
    return EXIT_OK


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _shell_path(path: Path) -> str:
    """`path` relative to the working directory when it is below it (shorter commands to copy)."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _serve(args: argparse.Namespace) -> int:
    from client.defaults import Endpoint, EnvironmentValueError
    from scripts.layout import SECRETS
    from scripts.serve import GrpcTls, ServerError, local_server, model_control_from_env
    from scripts.validate import checked_bundle, validate

    layout = _layout(args)
    repo = layout.flavor(args.flavor)
    try:
        bundle = checked_bundle(layout.repository)
        ensemble = bundle.ensemble.name
        server = local_server(layout, repo, Endpoint.from_env(), log_path=args.log_file or layout.logs / "tritonserver.log",
                              model_control=model_control_from_env(), grpc_tls=GrpcTls.from_env(SECRETS / "tls"))
    except (ConfigError, ServerError, EnvironmentValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not (repo / ensemble).is_dir():
        print(f"error: {repo} has no model {ensemble!r}: run `make build` first", file=sys.stderr)
        return EXIT_USAGE
    report = validate(repo, require_artifacts=True)
    if not report.ok():
        print("\n".join(str(f) for f in report.errors) + f"\nerror: {report.summary()}", file=sys.stderr)
        return EXIT_USAGE
    sample = next(iter(bundle.warmup_images), layout.repository)
    print(f"starting tritonserver on {repo} (log: {server.log_path}) ...", flush=True)
    # Explicit handlers: a shell may start us with SIGINT ignored, and service managers send SIGTERM.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        with server:
            from scripts.apply import mark_loaded

            mark_loaded(layout, args.flavor)  # what this server loaded: `make apply` compares edits with it
            tls = server.grpc_tls
            over = f" (TLS{', mutual' if tls.ca else ''}: {tls.cert})" if tls else ""
            trust = f" --ca-certs {_shell_path(tls.ca or tls.cert)}" if tls else ""  # one CA, or a self-signed server
            mutual = " --client-cert <your.crt> --client-key <your.key>" if tls and tls.ca else ""
            print(f"""
ready: model "{ensemble}"
  gRPC     {server.grpc_url}{over}
  HTTP     http://{server.http_url}
  metrics  {server.metrics_url}

try:  {_shell_path(Path(sys.executable))} -m client classify --url {server.grpc_url}{trust}{mutual} {_shell_path(sample)}
Ctrl-C stops the server.""", flush=True)
            server.process.wait()
            print(f"tritonserver exited with code {server.process.returncode}:\n{server.log_tail()}", file=sys.stderr)
            return EXIT_FAILED
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\nstopping tritonserver ...", flush=True)
        server.stop()
        print("stopped.")
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"adopt": _adopt, "build": _build, "serve": _serve, "validate": _validate, "diff": _diff, "apply": _apply,
                "doctor": _doctor, "verify": _verify, "k8s-check": _k8s_check, "monitor": _monitor, "soak": _soak, "tune": _tune,
                "engine": _engine, "gpu-files": _gpu_files}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
