"""python -m client: classify images with the served ensemble, check health, list models.

  python -m client classify FILE... [--url HOST:PORT[,HOST:PORT...]] [--protocol grpc|http] [--top-k K] [--json]
                                    [--concurrency N]
  python -m client health [--json]
  python -m client models [--json]          (an admin API: --admin-key or $TRITON_ADMIN_KEY)

Exit codes: 0 every image classified (or: healthy), 1 some images failed (or: not ready),
2 usage or connection error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from client import defaults
from client.api import ImageClassifierClient, ImageResult, Tls
from client.defaults import DEFAULT_MODEL, PROTOCOLS
from client.errors import ClientError, ServerUnavailable
from client.image_formats import SUPPORTED_TEXT
from client.images import Limits

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
PROGRESS_FROM = 20  # files; fewer finish before a progress bar would help


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="server host:port; several, comma-separated, spread the requests and fail over "
                                      "(host1:8001,host2:8001); gRPC also takes dns:///name:port, balanced over every "
                                      f"address of the name (default: ${defaults.ADDRESS_ENV} or "
                                      f"{defaults.DEFAULT_ADDRESS}, port "
                                        f"${defaults.PORT_ENV['grpc']} or {defaults.DEFAULT_PORTS['grpc']} for grpc, "
                                        f"${defaults.PORT_ENV['http']} or {defaults.DEFAULT_PORTS['http']} for http)")
    common.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default: %(default)s")
    common.add_argument("--model", default=DEFAULT_MODEL, help="default: %(default)s")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per call, retries included (default: %(default)s)")
    common.add_argument("--retries", type=int, default=3, help="retries of transient failures (default: %(default)s)")
    common.add_argument("--admin-key", default=None,
                        help=f"key for the server's admin APIs (default: ${defaults.ADMIN_KEY_ENV}, or the file "
                             f"${defaults.ADMIN_KEY_FILE_ENV} names)")
    common.add_argument("--tls", action="store_true", help="connect with TLS")
    common.add_argument("--ca-certs", help="CA bundle to verify the server (implies --tls)")
    common.add_argument("--client-cert", help="client certificate for mutual TLS (implies --tls)")
    common.add_argument("--client-key", help="its private key")
    common.add_argument("--insecure", action="store_true", help="with HTTP TLS: do not verify the server's certificate")
    common.add_argument("--json", action="store_true", help="one JSON document on stdout")

    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", parents=[common], help="classify image files")
    classify.add_argument("images", nargs="+", help=f"image files ({SUPPORTED_TEXT})")
    classify.add_argument("--top-k", type=int, default=3, help="labels per image (default: %(default)s)")
    classify.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    classify.add_argument("--images-per-request", type=int, default=1,
                          help="images packed in one request (default: 1; the server batches requests itself)")
    classify.add_argument("--max-bytes", type=int, default=Limits.max_bytes, help="refuse larger files (default: %(default)s)")
    classify.add_argument("--max-pixels", type=int, default=Limits.max_pixels, help="refuse larger images (default: %(default)s)")
    commands.add_parser("health", parents=[common], help="is the server live and ready, and is the model ready")
    commands.add_parser("models", parents=[common], help="the models of the server's repository and their state")
    return parser


def _client(args: argparse.Namespace) -> ImageClassifierClient:
    tls = None
    if args.tls or args.ca_certs or args.client_cert:
        tls = Tls(args.ca_certs, args.client_cert, args.client_key, args.insecure)
    extra = {}
    if args.command == "classify":
        extra = {"limits": Limits(args.max_bytes, args.max_pixels), "concurrency": args.concurrency,
                 "images_per_request": args.images_per_request}
    return ImageClassifierClient(args.url, args.protocol, args.model, args.timeout, args.retries, tls=tls,
                                 admin_key=args.admin_key or defaults.admin_key(), **extra)


class Progress:
    """A one-line progress bar on stderr, for many files on a terminal."""

    def __init__(self, total: int):
        self.total, self.done, self.failed = total, 0, 0
        self.enabled = total >= PROGRESS_FROM and sys.stderr.isatty()

    def __call__(self, result: ImageResult) -> None:
        self.done += 1
        self.failed += not result.ok
        if self.enabled:
            filled = 30 * self.done // self.total
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} ({self.failed} failed)")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _classify(args, classifier: ImageClassifierClient) -> int:
    results = classifier.classify(args.images, args.top_k, on_result=Progress(len(args.images)))
    unreachable = [r for r in results if isinstance(r.error, ServerUnavailable)]
    if unreachable and len(unreachable) == len(results):
        raise unreachable[0].error
    if args.json:
        print(json.dumps({"results": [{"source": r.source, "ok": r.ok,
                                       "predictions": [dataclasses.asdict(p) for p in r.predictions],
                                       "error": None if r.ok else {"type": type(r.error).__name__, "message": str(r.error)}}
                                      for r in results]}, indent=2))
    else:
        width = max(len(r.source) for r in results)
        print(f"{'image':<{width}}  {'score':>7}  label")
        for result in results:
            if not result.ok:
                continue
            for rank, p in enumerate(result.predictions):
                print(f"{result.source if rank == 0 else '':<{width}}  {p.score:7.4f}  {p.label}")
        for result in results:
            if not result.ok:
                print(f"error: {result.error}", file=sys.stderr)
    return EXIT_SOME_FAILED if any(not r.ok for r in results) else EXIT_OK


def _health(args, classifier: ImageClassifierClient) -> int:
    health = classifier.health()
    if args.json:
        print(json.dumps(dataclasses.asdict(health)))
    else:
        print(f"server {classifier.url}: live={health.live} ready={health.ready}; "
              f"model {classifier.model}: ready={health.model_ready}")
    return EXIT_OK if health.live and health.ready and health.model_ready else EXIT_SOME_FAILED


def _models(args, classifier: ImageClassifierClient) -> int:
    models = classifier.models()
    if args.json:
        print(json.dumps(models, indent=2))
    else:
        for model in models:
            print(f"{model['name']:<24} {model['version'] or '-':>7}  {model['state'] or '-':<12} {model['reason']}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "classify" and (args.top_k < 1 or args.concurrency < 1 or args.images_per_request < 1):
        parser.error("--top-k, --concurrency and --images-per-request must be at least 1")
    try:
        with _client(args) as classifier:
            return {"classify": _classify, "health": _health, "models": _models}[args.command](args, classifier)
    except (ClientError, defaults.EnvironmentValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
