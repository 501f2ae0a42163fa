"""Command line: `python -m scripts build|serve --help`.

Exit codes: 0 success, 1 the build or the server failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

from scripts import repository
from scripts.config import ConfigError

PROJECT = Path(__file__).resolve().parent.parent
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_layout_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=PROJECT / "model_repository",
                        help="the committed model repository (source of truth; default: %(default)s)")
    parser.add_argument("--build-dir", type=Path, default=PROJECT / "build",
                        help="where artifacts and generated flavors go (default: %(default)s)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build artifacts and the cpu/local repositories",
                                description="Build the artifacts and the generated repositories. "
                                            "Stages whose inputs did not change are skipped.")
    _add_layout_options(build)
    build.add_argument("--model", default="demo",
                       help="'demo' (default: train the built-in demo model), or a model file: "
                            "ONNX (.onnx), TorchScript, or a pickled torch.nn.Module (torch.save(model))")
    build.add_argument("--flavor", choices=[*repository.FLAVORS, "all"], default="all",
                       help="which repositories to generate (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild every stage")
    build.add_argument("--json", action="store_true", help="print a JSON summary on stdout (progress goes to stderr)")

    serve = commands.add_parser("serve", help="run tritonserver on the local repository until Ctrl-C",
                                description="Serve the local flavor with the tritonserver from nvidia-pytriton. "
                                            "Ports: TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT "
                                            "(default 8000/8001/8002). Bind address: TRITON_ADDRESS "
                                            "(default 127.0.0.1). Admin APIs need the header admin-key: "
                                            "$TRITON_ADMIN_KEY (random when unset).")
    _add_layout_options(serve)
    serve.add_argument("--flavor-repository", type=Path, default=None,
                       help="the repository to serve (default: <build-dir>/repos/local)")
    serve.add_argument("--log-file", type=Path, default=None,
                       help="server log (default: <build-dir>/logs/tritonserver.log)")
    return parser


def _build(args: argparse.Namespace) -> int:
    from scripts.build import Builder, Layout
    from scripts.intake import IntakeError
    from scripts.export import ExportError

    progress_stream = sys.stderr if args.json else sys.stdout
    flavors = repository.FLAVORS if args.flavor == "all" else (args.flavor,)
    try:
        builder = Builder(Layout(args.repository, args.build_dir), model=args.model, force=args.force,
                          progress=lambda message: print(message, file=progress_stream, flush=True))
        results = builder.run(flavors)
    except ExportError as exc:
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
    from scripts.config import load_bundle
    from scripts.serve import LocalServer, ServerError, ports_from_env, prepare_backends

    repo = args.flavor_repository or args.build_dir / "repos" / "local"
    try:
        bundle = load_bundle(args.repository)
        ensemble = bundle.ensemble.name
        ports = ports_from_env()
        server = LocalServer(
            repository=repo,
            backends=prepare_backends(args.build_dir / "backends"),
            http_port=ports["http"], grpc_port=ports["grpc"], metrics_port=ports["metrics"],
            address=os.environ.get("TRITON_ADDRESS", "127.0.0.1"),
            log_path=args.log_file or args.build_dir / "logs" / "tritonserver.log",
        )
    except (ConfigError, ServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not (repo / ensemble).is_dir():
        print(f"error: {repo} has no model {ensemble!r}: run `make build` first", file=sys.stderr)
        return EXIT_USAGE
    sample = next((args.repository / bundle.preprocess.model_name / "warmup").glob("*.*"), args.repository)
    print(f"starting tritonserver on {repo} (log: {server.log_path}) ...", flush=True)
    # Explicit handlers: a shell may start us with SIGINT ignored, and service managers send SIGTERM.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        with server:
            print(f"""
ready: model "{ensemble}"
  gRPC     {server.grpc_url}
  HTTP     http://{server.http_url}
  metrics  {server.metrics_url}

try:  {_shell_path(Path(sys.executable))} -m client classify --url {server.grpc_url} {_shell_path(sample)}
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
    return {"build": _build, "serve": _serve}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
