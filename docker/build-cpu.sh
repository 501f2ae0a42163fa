#!/usr/bin/env bash
# The compose `builder-cpu` (cpu profile): the cpu flavor, serialized with the server's DALI, validated.
set -euo pipefail
python -m scripts build --model "${MODEL:-demo}" --flavor cpu
python -m scripts validate --require-artifacts --strict --flavor cpu build/repos/cpu
