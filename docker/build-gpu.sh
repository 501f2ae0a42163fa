#!/usr/bin/env bash
# The compose `builder` (gpu profile): every artifact of the gpu flavor, then the validator.
# Exits non-zero on the first failure, so the server never starts on a half-built repository.
set -euo pipefail
# MODEL (a file inside the project, or "demo") and MODEL_CODE from .env; unset: the model `make adopt` recorded.
python -m scripts build ${MODEL:+--model "$MODEL"} ${MODEL_CODE:+--code "$MODEL_CODE"} --flavor cpu
python -m scripts engine --precision "${TRT_PRECISION:-fp16}"
python -m scripts gpu-files
python -m scripts validate --require-artifacts --strict --flavor gpu model_repository
# What the server will load: `docker compose run --rm apply` compares later edits with it.
python -m scripts apply --flavor gpu --mark-loaded
