"""The load generator's ceiling: requests/s one Locust worker drives against a trivial model, beside a
plain tritonclient loop on the same server, over gRPC and HTTP.

    python -m loadtest.ceiling [--seconds 5] [--users 8] [--json]

Starts the local tritonserver on free ports with loadtest/identity (a python-backend model that
echoes its input), sends a real demo JPEG, and prints a table. When Locust's rate is well below the
plain loop's at the same concurrency, the load generator, not the server, is the limit. Client and
server share this machine's cores: read the numbers as ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from client.images import prepare
from loadtest.loop import closed_loop
from scripts.config import load_bundle
from scripts.layout import PROJECT, Layout
from scripts.serve import LocalServer, local_server

HERE = Path(__file__).resolve().parent
IDENTITY = HERE / "identity"
NAMES = ("IMAGE", "ECHO")


def plain_loop(protocol: str, url: str, image, seconds: float, threads: int) -> float:
    """Requests/s of `threads` threads, each with its own tritonclient client, sending back to back."""
    return closed_loop(protocol, url, "identity", NAMES, [image], threads, seconds, top_k=0).requests_per_s


def locust_run(user: str, server: LocalServer, images_dir: Path, seconds: float, users: int, workdir: Path) -> dict:
    """One Locust process (one worker), headless, against the identity model; returns its summary."""
    summary = workdir / f"{user}_summary.json"
    command = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "--only-summary",
               "-u", str(users), "-r", str(users), "--run-time", f"{seconds:g}s", "--model", "identity", "--top-k", "0",
               "--images-dir", str(images_dir), "--triton-grpc", server.grpc_url, "--triton-http", server.http_url,
               "--metrics-url", "", "--summary-file", str(summary), user]
    subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(summary.read_text())["client"]


def measure(seconds: float, users: int, image_path: Path) -> list[dict]:
    image = prepare(image_path)
    rows = []
    with tempfile.TemporaryDirectory() as scratch, \
            local_server(Layout(), IDENTITY, log_path=Path(scratch) / "server.log") as server:
        images_dir = Path(scratch) / "images"
        images_dir.mkdir()
        (images_dir / image_path.name).write_bytes(image.data)
        for protocol, user in (("grpc", "GrpcUser"), ("http", "HttpUser")):
            url = server.grpc_url if protocol == "grpc" else server.http_url
            one = plain_loop(protocol, url, image, seconds, 1)
            many = plain_loop(protocol, url, image, seconds, users)
            swarm = locust_run(user, server, images_dir, seconds, users, Path(scratch))
            rows.append({"protocol": protocol, "loop_1_thread_rps": one, f"loop_{users}_threads_rps": many,
                         f"locust_{users}_users_rps": swarm["rps"], "locust_p50_ms": swarm["p50_ms"],
                         "locust_cpu_percent": swarm["cpu_percent"], "locust_vs_loop": swarm["rps"] / many})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.ceiling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default: %(default)s)")
    parser.add_argument("--users", type=int, default=8, help="Locust users and loop threads (default: %(default)s)")
    parser.add_argument("--image", type=Path, help="the payload (default: the preprocessing model's warmup image)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.image is None:
        samples = load_bundle(Layout().repository).warmup_images
        if not samples:
            parser.error("the committed repository has no warmup image: pass --image")
        args.image = samples[0]
    print(f"measuring: {args.seconds:g}s per cell, {args.users} users/threads, payload {args.image.stat().st_size} bytes ...",
          file=sys.stderr, flush=True)
    rows = measure(args.seconds, args.users, args.image)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    n = args.users
    print(f"| protocol | plain loop, 1 thread | plain loop, {n} threads | Locust, 1 worker, {n} users | Locust / loop "
          "| Locust p50 | Locust CPU (of a core) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['protocol']} | {row['loop_1_thread_rps']:.0f} req/s | {row[f'loop_{n}_threads_rps']:.0f} req/s | "
              f"{row[f'locust_{n}_users_rps']:.0f} req/s | {row['locust_vs_loop']:.2f} | {row['locust_p50_ms']:.1f} ms | "
              f"{row['locust_cpu_percent']:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
