"""Stand-ins for `docker` and `nvidia-smi`, which cannot run on the machines that test this project.

`standin.py docker ARGS...` prints the recording of that docker invocation: <name>.stdout, <name>.stderr
and <name>.rc, from the first folder of $STANDIN_RECORDINGS (colon-separated) that holds it.
`standin.py nvidia-smi --query-gpu=F1,F2 --format=csv,noheader,nounits` prints the fields of the GPUs
recorded in $STANDIN_GPUS (colon-separated JSON files), as nvidia-smi does. An invocation with no
recording fails loudly, so a test notices when the doctor starts asking something new.
"""

import json
import os
import sys
from pathlib import Path

DOCKER = {
    ("version", "--format", "{{json .}}"): "docker-version",
    ("compose", "version", "--format", "json"): "docker-compose-version",
    ("info", "--format", "{{json .}}"): "docker-info",
}


def docker(args: list[str]) -> int:
    name = DOCKER.get(tuple(args))
    for folder in filter(None, os.environ.get("STANDIN_RECORDINGS", "").split(":")):
        stdout = Path(folder, f"{name}.stdout")
        if name and stdout.is_file():
            sys.stdout.write(stdout.read_text())
            stderr, rc = Path(folder, f"{name}.stderr"), Path(folder, f"{name}.rc")
            sys.stderr.write(stderr.read_text() if stderr.is_file() else "")
            return int(rc.read_text()) if rc.is_file() else 0
    sys.stderr.write(f"stand-in: no recording of `docker {' '.join(args)}`\n")
    return 97


def nvidia_smi(args: list[str]) -> int:
    options = dict(arg.split("=", 1) for arg in args if "=" in arg)
    if options.get("--format") != "csv,noheader,nounits" or "--query-gpu" not in options:
        sys.stderr.write(f"stand-in: no recording of `nvidia-smi {' '.join(args)}`\n")
        return 97
    gpus = [json.loads(Path(path).read_text()) for path in os.environ["STANDIN_GPUS"].split(":")]
    fields = options["--query-gpu"].split(",")
    for field in fields:
        if field not in gpus[0]:
            print(f'Field "{field}" is not a valid field to query.')
            return 2
    for gpu in gpus:
        print(", ".join(gpu[field] for field in fields))
    return 0


if __name__ == "__main__":
    program, *arguments = sys.argv[1:]
    sys.exit({"docker": docker, "nvidia-smi": nvidia_smi}[program](arguments))
