"""Facts the build, the validator, the server start-up and the tools share, each defined once.

This module imports nothing: the build copies it beside the local flavor's python models.

Wire-level facts (ports, the admin header, the served model's name) belong to the client:
`client/defaults.py`. Paths belong to `scripts/layout.py`.
"""

from __future__ import annotations

# -- flavors of the model repository -------------------------------------------------------------
GPU, CPU, LOCAL = "gpu", "cpu", "local"
FLAVORS = (GPU, CPU, LOCAL)
COMMITTED_FLAVOR = GPU  # model_repository/ as ops edit it
GENERATED_FLAVORS = (CPU, LOCAL)  # derived by the build into build/repos/<flavor>
CPU_ONLY_FLAVORS = (CPU, LOCAL)  # no GPU where they run: KIND_GPU instances cannot load
SERVED_FLAVOR = LOCAL  # what `make serve` runs on a machine with only Python

# -- the model the build takes -------------------------------------------------------------------
DEMO_MODEL = "demo"  # train the built-in demo model instead of taking a file

# -- the TensorRT engine -------------------------------------------------------------------------
FP32, FP16 = "fp32", "fp16"
PRECISIONS = (FP32, FP16)
DEFAULT_PRECISION = FP16
PRECISION_ENV = "TRT_PRECISION"

# -- inside a model repository -------------------------------------------------------------------
CONFIG_FILENAME = "config.pbtxt"
VERSION = "1"  # the one version folder the build fills
WARMUP_DIR = "warmup"  # Triton reads model_warmup input_data_file from <model>/warmup/
ONNX_MODEL = "model.onnx"
TENSORRT_PLAN = "model.plan"
DALI_PIPELINE = "model.dali"
DALI_SCRIPT = "dali.py"  # the DALI backend's autoserialized alternative to model.dali
PYTHON_MODEL = "model.py"
# The classifier parameter both ONNX Runtime flavors read (the onnxruntime backend's key; the local python model's).
ORT_THREADS = "intra_op_thread_count"
# What each platform (or the platform a backend stands for) loads from a version folder.
BACKEND_PLATFORM = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx", "dali": "dali", "python": "python"}
ARTIFACTS = {
    "tensorrt_plan": (TENSORRT_PLAN,),
    "onnxruntime_onnx": (ONNX_MODEL,),
    "dali": (DALI_PIPELINE, DALI_SCRIPT),
    "python": (PYTHON_MODEL,),
}

# -- the admin key (docker/serve.sh refuses a shorter one too) --------------------------------------
ADMIN_KEY_MIN_LENGTH = 32

# -- how the server loads models (`make serve` and docker/serve.sh read the same variable) ---------
MODEL_CONTROL_ENV = "TRITON_MODEL_CONTROL_MODE"
MODEL_CONTROL_MODES = ("none", "explicit")  # never poll: a half-written file would be loaded
DEFAULT_MODEL_CONTROL = "none"  # models load once at start; explicit: the (admin-key) repository API loads them

# -- exposing a server with known unfixed CVEs (README "Security") ------------------------------------
ALLOW_KNOWN_CVES_ENV = "TRITON_ALLOW_KNOWN_CVES"  # "1": serve such a server on a non-loopback address anyway

# -- gRPC over TLS: the files of a TLS folder (secrets/tls; in compose, mounted at /opt/bundle/tls) ----
TLS_CERT, TLS_KEY, TLS_CA = "server.crt", "server.key", "ca.crt"  # ca.crt present: clients need a certificate
TLS_DIR_ENV = "TRITON_GRPC_TLS_DIR"  # another folder than secrets/tls (make serve, docker/serve.sh)
# The largest HTTP request docker/serve.sh lets the server read, where its release has the option
# (--http-max-input-size; not the wheel's 2.51): room for the client's largest image, and no more,
# because the python backend keeps shared memory for the largest request an instance has seen.
MAX_HTTP_REQUEST_BYTES = 64 * 1024 * 1024
