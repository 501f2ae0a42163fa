"""python -m client classify IMAGE... : print the top-k labels of each image.

Exit codes: 0 every image classified, 1 some images failed, 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from client.api import DEFAULT_MODEL, PROTOCOLS, ClassificationError, ImageClassifierClient

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="classify image files")
    classify.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, TIFF, WebP, ...)")
    classify.add_argument("--url", help="server address (default: localhost:8001 for grpc, localhost:8000 for http)")
    classify.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default: %(default)s")
    classify.add_argument("--model", default=DEFAULT_MODEL, help="default: %(default)s")
    classify.add_argument("--top-k", type=int, default=3, help="labels per image (default: %(default)s)")
    classify.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: %(default)s)")
    classify.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    from tritonclient.utils import InferenceServerException

    results, failures = [], []
    try:
        with ImageClassifierClient(args.url, args.protocol, args.model, args.timeout) as classifier:
            classifier.tensor_names()  # reach the server and the model once, before any image
            for index, image in enumerate(args.images):
                try:
                    results.append(classifier.classify_one(image, args.top_k, index))
                except (ClassificationError, OSError) as exc:
                    failures.append({"source": image, "error": str(exc)})
    except (InferenceServerException, ConnectionError) as exc:
        reason = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
        print(f"error: cannot reach model {args.model!r} over {args.protocol}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"results": [dataclasses.asdict(r) for r in results], "failures": failures}, indent=2))
    else:
        for result in results:
            print(result.source)
            for p in result.predictions:
                print(f"  {p.score:8.4f}  {p.label}")
        for failure in failures:
            print(f"error: {failure['error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
