# The two commands the README gives: `make serve` and `make test`. Everything else is a step of those.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The model the build takes: empty, the one `make adopt` recorded (else the demo); or a file, or "demo".
MODEL ?=
CODE ?=
FLAVOR ?= local
EXTRAS ?= build,dali,local,backends,client,loadtest,bench,monitor,k8s,test
comma := ,
INSTALLED := $(VENV)/.installed-$(subst $(comma),+,$(EXTRAS))

REPO ?= model_repository
# Source archives of Triton's backends, for machines that cannot reach GitHub (CI, the development
# machines): their shared snapshots, beside the checkout or at /work/shared. None there: the build clones.
export TRITON_BACKEND_SOURCES ?= $(firstword $(wildcard $(CURDIR)/../shared/vendor/triton-backends /work/shared/vendor/triton-backends))

.PHONY: help install adopt build k8s-check monitor tune backends serve apply doctor validate loadtest loadtest-ceiling soak bench lint test test-gpu verify compose-config clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# One marker per set of extras: .installed-build+dali+... (make install), .installed-client (doctor, verify).
$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(subst +,$(comma),$*)]'
	touch $@
# What the GPU box's host needs for the doctor and verify: the project and its client, not the build.
HOST_TOOLS := $(VENV)/.installed-client

install: $(INSTALLED)  ## create .venv and install the project (EXTRAS=build,dali,local,client,loadtest,bench,test)

build: install  ## build artifacts and the cpu/local repositories (the adopted model, else the demo; MODEL=file|demo, CODE=dir)
	$(PY) -m scripts build $(if $(MODEL),--model '$(MODEL)') $(if $(CODE),--code '$(CODE)')

adopt: install  ## fit the configs to your model: MODEL=file [LABELS=file] [INPUT_SIZE=224] [CODE=dir] (shows the diff; ARGS=--yes writes)
	@test -n '$(MODEL)' || { echo "usage: make adopt MODEL=model-file [LABELS=labels.txt] [INPUT_SIZE=224] [CODE=dir] [ARGS=--yes]" >&2; exit 2; }
	$(PY) -m scripts adopt '$(MODEL)' $(if $(LABELS),--labels '$(LABELS)') $(if $(INPUT_SIZE),--input-size '$(INPUT_SIZE)') \
		$(if $(CODE),--code '$(CODE)') $(ARGS)

backends: install  ## compile Triton's DALI and ONNX Runtime backends for the cpu flavor (needs g++, make, patch, rapidjson-dev)
	$(PY) -m scripts build --only backends

serve: build $(if $(filter cpu,$(FLAVOR)),backends)  ## build, then serve FLAVOR=local (default) or cpu on TRITON_{HTTP,GRPC,METRICS}_PORT
	$(PY) -m scripts serve --flavor $(FLAVOR)

apply: install  ## put edits of model_repository/ live on the running server (TRITON_MODEL_CONTROL_MODE=explicit), or roll back; FLAVOR=local|cpu|gpu
	$(PY) -m scripts apply --flavor $(FLAVOR) $(ARGS)

doctor: $(HOST_TOOLS)  ## on the GPU box, before `docker compose up`: Docker, driver, GPUs, toolkit, .env, ports, admin key, disk
	$(PY) -m scripts doctor $(ARGS)

validate: install  ## check a model repository (REPO=model_repository, or build/repos/cpu, build/repos/local)
	$(PY) -m scripts validate '$(REPO)'

loadtest: build  ## a short headless Locust run against the local server (started if none is running); ARGS=... to Locust
	$(PY) -m loadtest.local $(ARGS)

loadtest-ceiling: build  ## how many req/s one Locust worker drives vs a plain tritonclient loop (identity model)
	$(PY) -m loadtest.ceiling

k8s-check: install  ## the Helm chart offline: helm lint, rendered (defaults and helm/triton-bundle/ci/*.yaml) into build/k8s, schema-validated
	$(PY) -m scripts k8s-check

tune: build $(if $(filter cpu,$(FLAVOR)),backends)  ## search the serving knobs on a live FLAVOR=local|cpu server; build/tune/ gets points.csv, tune.png, recommended.diff (ARGS=--write applies it)
	$(PY) -m scripts tune $(if $(filter file,$(origin FLAVOR)),,--flavor $(FLAVOR)) $(ARGS)

monitor: install  ## Prometheus here (apt-get install prometheus), scraping the local server of `make serve` with the bundle's rules
	$(PY) -m scripts monitor $(ARGS)

soak: build $(if $(filter cpu,$(FLAVOR)),backends)  ## SOAK_SECONDS (default 600) of mixed good and bad traffic and one crash; FLAVOR=local|cpu (build/soak/)
	$(PY) -m scripts soak --flavor $(FLAVOR) $(ARGS)

bench: build  ## serving cost side by side: in-process vs served, batching on/off, two models, build time (build/bench/)
	$(PY) -m scripts.bench

lint: install  ## ruff (pycodestyle, pyflakes, isort, bugbear, pyupgrade) and the import layering contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

test: lint  ## the linters, then unit and integration tests (GPU tests are skipped)
	$(PY) -m pytest

test-gpu:  ## on the GPU box: every GPU test, in the builder image, against the running stack (starts it if needed)
	COMPOSE_PROFILES=gpu,verify docker compose run --rm verify

verify: $(HOST_TOOLS)  ## after `docker compose up` (or `make serve FLAVOR=...`): one table to paste back when something is off
	$(PY) -m scripts verify $(if $(filter command line,$(origin FLAVOR)),--flavor $(FLAVOR)) $(ARGS)

compose-config: install  ## validate docker-compose.yml for every profile, offline (the profiles and their services: tests/test_deployment.py)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_deployment.py -k test_compose_file_is_valid_for_each_profile

clean:  ## remove build outputs (not the venv, nor the record of the adopted model)
	find build -mindepth 1 -maxdepth 1 ! -name adopted.json -exec rm -rf {} + 2>/dev/null || true
