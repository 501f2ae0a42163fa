#!/usr/bin/env bash
# The compose `builder-cpu` (cpu profile): the cpu flavor, serialized with the server's DALI, validated.
set -euo pipefail
# MODEL (a file inside the project, or "demo") and MODEL_CODE from .env; unset: the model `make adopt` recorded.
python -m scripts build ${MODEL:+--model "$MODEL"} ${MODEL_CODE:+--code "$MODEL_CODE"} --flavor cpu
python -m scripts validate --require-artifacts --strict --flavor cpu build/repos/cpu
