"""`make loadtest`: a short headless Locust run against the local server.

Uses the server already answering on TRITON_{HTTP,GRPC,METRICS}_PORT (for example `make serve` in
another shell); when none does, starts the local flavor for the run and stops it after. Extra
arguments go to Locust: `python -m loadtest.local --run-time 1m --slo-p95-ms 50`.
Exit code: Locust's (non-zero when the SLO gate fails or requests fail).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

from client.defaults import Endpoint, EnvironmentValueError
from scripts.layout import PROJECT, Layout
from scripts.serve import local_server

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    layout = Layout()
    try:
        server = local_server(layout, endpoint=Endpoint.from_env(), log_path=layout.logs / "loadtest-server.log")
    except EnvironmentValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if server.is_ready():
            print(f"using the server already running at {server.http_url}", flush=True)
        else:
            print(f"starting the local server on {server.grpc_url} for this run ...", flush=True)
            stack.enter_context(server)
        command = [sys.executable, "-m", "locust", "--config", str(HERE / "locust.conf"),
                   "--run-time", "20s", "--triton-grpc", server.grpc_url, "--triton-http", server.http_url,
                   "--metrics-url", server.metrics_url, *argv]
        return subprocess.run(command, cwd=PROJECT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
