"""Engine: the ONNX model and the classifier config in, a TensorRT plan and its metadata out.

Runs on the GPU box, in the builder container of the same NGC release as the server (a plan loads
only in the TensorRT version and on the GPU architecture it was built with). Everything that needs
no GPU is plain Python here and unit-tested: the optimization profile from the config, the
metadata written beside the plan (`model.plan.json`), the decision to rebuild, and the accuracy gate.

Precision is in the network's own types (a strongly typed network): FP32 builds the ONNX model as it
is; FP16 builds an FP16 copy of it (weights and compute in FP16, inputs and outputs in FP32 as the
config declares them), made with onnxconverter-common. TensorRT 11 removed the FP16 builder flag
(deprecated since 10.12) and makes every network strongly typed; TensorRT 10 needs the STRONGLY_TYPED
creation flag, which 11 keeps and ignores. So one build path serves both, and no release is pinned
that it cannot build for.

Equivalent trtexec command (printed by `python -m scripts engine --print-trtexec`, which also writes
the FP16 copy):
    trtexec --onnx=model.fp16.onnx --saveEngine=model.plan --stronglyTyped --timingCacheFile=timing.cache \
            --minShapes=PIXELS:1x3x64x64 --optShapes=PIXELS:32x3x64x64 --maxShapes=PIXELS:32x3x64x64
"""

from __future__ import annotations

import dataclasses
import datetime
import subprocess
from pathlib import Path

import numpy as np

from scripts import plan_metadata
from scripts.config import ClassifierSpec
from scripts.constants import FP16, FP32, PRECISIONS
from scripts.plan_metadata import Profile

# The accuracy gate, against ONNX Runtime FP32 on real images (all held-out images: with 300, up to
# 3 top-1 flips pass), compared as probabilities.
MIN_TOP1_AGREEMENT = 0.99
MAX_ABS_DIFF = {FP32: 1e-3, FP16: 2e-2}
WORKSPACE_BYTES = 1 << 30


class EngineError(RuntimeError):
    """The engine cannot be built, or fails the accuracy gate."""


def profile_for(spec: ClassifierSpec) -> Profile:
    """min 1, max = max_batch_size, opt = the largest preferred batch size (else max_batch_size).

    Triton sends batches of any size up to max_batch_size, so the profile must cover all of them;
    with dynamic batching under load most batches are the preferred (or the largest) size.
    """
    if spec.max_batch_size < 1:
        raise EngineError(f'classifier "{spec.model_name}": max_batch_size must be >= 1 for a batched engine')
    fitting = [size for size in spec.preferred_batch_sizes if 1 <= size <= spec.max_batch_size]
    return Profile(min=1, opt=max(fitting) if fitting else spec.max_batch_size, max=spec.max_batch_size)


@dataclasses.dataclass(frozen=True)
class Target:
    """What the plan must be built for; any difference from the recorded metadata means rebuild."""

    onnx_sha256: str
    input_name: str
    input_dims: tuple[int, ...]
    output_name: str
    profile: Profile
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str

    def as_metadata(self, **extra) -> dict:
        data = {key: value for key, value in dataclasses.asdict(self).items() if key != "profile"}
        data["input_dims"] = list(self.input_dims)
        return {**data, **plan_metadata.describe(self.profile, {self.input_name: self.input_dims}), **extra}


def stale_reasons(recorded: dict | None, target: Target) -> list[str]:
    """Why the plan described by `recorded` metadata does not fit `target` ([] = up to date)."""
    if recorded is None:
        return ["no engine metadata (first build, or the plan was built elsewhere)"]
    wanted = target.as_metadata()
    labels = {
        "onnx_sha256": "the ONNX model changed",
        "input_name": "the input tensor name changed",
        "input_dims": "the input dims changed",
        "output_name": "the output tensor name changed",
        plan_metadata.PROFILE: "the batch profile changed (max_batch_size or preferred_batch_size in the config)",
        "precision": "the precision changed",
        "tensorrt_version": "the TensorRT version changed",
        "gpu_name": "the GPU changed",
        "compute_capability": "the GPU architecture changed",
    }
    return [f"{why}: {recorded.get(key)!r} -> {wanted[key]!r}" for key, why in labels.items() if recorded.get(key) != wanted[key]]


def typed_onnx_path(onnx: Path, precision: str, work_dir: Path) -> Path:
    """The ONNX model TensorRT builds for `precision`: the model itself, or its FP16 copy in `work_dir`."""
    return onnx if precision == FP32 else work_dir / f"{onnx.stem}.{precision}.onnx"


def write_fp16_copy(onnx: Path, target: Path) -> Path:
    """An FP16 copy of `onnx` whose inputs and outputs stay FP32 (the tensors the config declares).

    NVIDIA's TensorRT 11 migration guide suggests ModelOpt AutoCast for this; it brings onnxruntime-gpu
    and CUDA 12 cupy into the builder, and another numpy and onnx. The accuracy gate judges either.
    """
    import onnx as onnx_lib

    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise EngineError("an FP16 engine needs onnxconverter-common to make the FP16 model "
                          "(pip install 'triton-bundle[build]'), or build with --precision fp32") from exc
    converted = float16.convert_float_to_float16(onnx_lib.load(str(onnx)), keep_io_types=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(".tmp")
    onnx_lib.save(converted, str(staging))
    staging.replace(target)
    return target


def trtexec_command(onnx: Path, plan: Path, spec: ClassifierSpec, timing_cache: Path) -> list[str]:
    """The trtexec equivalent of `build_plan`, for people who prefer the CLI (`onnx` already typed)."""
    profile = profile_for(spec)
    dims = "x".join(str(d) for d in spec.input_dims)
    return [
        "trtexec", f"--onnx={onnx}", f"--saveEngine={plan}", "--stronglyTyped", f"--timingCacheFile={timing_cache}",
        f"--minShapes={spec.input_name}:{profile.min}x{dims}",
        f"--optShapes={spec.input_name}:{profile.opt}x{dims}",
        f"--maxShapes={spec.input_name}:{profile.max}x{dims}",
        f"--memPoolSize=workspace:{WORKSPACE_BYTES >> 20}M",
    ]


@dataclasses.dataclass
class GateReport:
    precision: str
    samples: int
    top1_agreement: float
    max_abs_diff: float
    passed: bool

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"{self.precision} accuracy gate {verdict} on {self.samples} images: top-1 agreement "
                f"{self.top1_agreement:.4f} (min {MIN_TOP1_AGREEMENT}), max abs diff {self.max_abs_diff:.2e} "
                f"(max {MAX_ABS_DIFF[self.precision]:.0e})")


def is_distribution(scores: np.ndarray) -> bool:
    return bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def accuracy_gate(reference: np.ndarray, candidate: np.ndarray, precision: str) -> GateReport:
    """Compare engine scores with ONNX Runtime FP32 scores ([N, classes] each), as probabilities."""
    if reference.shape != candidate.shape:
        raise EngineError(f"engine output shape {candidate.shape} differs from ONNX Runtime's {reference.shape}")
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    if not is_distribution(reference):  # logits: compare what they mean, probabilities
        reference, candidate = softmax(reference), softmax(candidate)
    agreement = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    diff = float(np.abs(reference - candidate).max())
    passed = agreement >= MIN_TOP1_AGREEMENT and diff <= MAX_ABS_DIFF[precision]
    return GateReport(precision, len(reference), agreement, diff, passed)


def gpu_identity() -> tuple[str, str]:
    """(name, compute capability) of GPU 0, from nvidia-smi (present wherever the NVIDIA runtime is)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "--id=0"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineError(f"no GPU visible (nvidia-smi failed: {exc}); is the NVIDIA Container Toolkit installed?") from exc
    name, capability = (part.strip() for part in out.strip().splitlines()[0].split(","))
    return name, capability


def strongly_typed_flags(trt) -> int:
    """create_network() flags for a strongly typed network: the flag on TensorRT 10, where it is opt-in;
    0 where a later TensorRT no longer has it (strong typing is then the only mode)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


# -- GPU only below: needs TensorRT and a CUDA device ------------------------------------------------
def build_plan(onnx: Path, spec: ClassifierSpec, timing_cache: Path, progress=print) -> bytes:
    """Build a serialized TensorRT engine of the typed `onnx` (one optimization profile)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx}: TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = profile_for(spec)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(spec.input_name, *[(size, *spec.input_dims) for size in (profile.min, profile.opt, profile.max)])
    config.add_optimization_profile(trt_profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another device or TensorRT is refused: start a fresh one.
        progress(f"{timing_cache}: does not fit this GPU/TensorRT; starting a new timing cache")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    progress(f"building the TensorRT {trt.__version__} engine of {onnx.name} (strongly typed, batch "
             f"{profile.min}/{profile.opt}/{profile.max}) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError("TensorRT failed to build the engine (see its log above)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(cache.serialize()))
    return bytes(serialized)


def run_plan(plan: bytes, spec: ClassifierSpec, inputs: np.ndarray) -> np.ndarray:
    """Scores of the engine on `inputs` [N, C, H, W], in batches of at most max_batch_size."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    outputs = []
    stream = torch.cuda.Stream()
    for start in range(0, len(inputs), spec.max_batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(inputs[start:start + spec.max_batch_size])).cuda()
        scores = torch.empty((len(batch), len(spec.labels)), dtype=torch.float32, device="cuda")
        context.set_input_shape(spec.input_name, tuple(batch.shape))
        context.set_tensor_address(spec.input_name, batch.data_ptr())
        context.set_tensor_address(spec.output_name, scores.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed")
        stream.synchronize()
        outputs.append(scores.cpu().numpy())
    return np.concatenate(outputs)


def tensorrt_version() -> str:
    import tensorrt as trt

    return trt.__version__


def timing_cache_path(directory: Path, trt_version: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT version and GPU architecture (a cache fits only those)."""
    return directory / f"timing-trt{trt_version}-sm{compute_capability.replace('.', '')}.cache"


def build(onnx: Path, plan: Path, spec: ClassifierSpec, precision: str, cache_dir: Path, images: np.ndarray,
          force: bool = False, progress=print) -> dict:
    """Build `plan` unless its metadata says it fits; gate its accuracy; write the metadata. Returns it."""
    import hashlib

    import onnxruntime as ort

    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    name, capability = gpu_identity()
    target = Target(
        onnx_sha256=hashlib.sha256(onnx.read_bytes()).hexdigest(),
        input_name=spec.input_name, input_dims=tuple(spec.input_dims), output_name=spec.output_name,
        profile=profile_for(spec), precision=precision, tensorrt_version=tensorrt_version(),
        gpu_name=name, compute_capability=capability,
    )
    reasons = stale_reasons(plan_metadata.read(plan), target) if plan.is_file() else ["no plan yet"]
    if not reasons and not force:
        progress(f"{plan}: up to date (TensorRT {target.tensorrt_version}, {name}, {precision})")
        return plan_metadata.read(plan)
    progress(f"{plan}: building because " + "; ".join(reasons or ["--force"]))
    timing_cache = timing_cache_path(cache_dir, target.tensorrt_version, capability)
    typed = typed_onnx_path(onnx, precision, cache_dir)
    if typed != onnx:
        write_fp16_copy(onnx, typed)
    serialized = build_plan(typed, spec, timing_cache, progress)
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    reference = session.run([spec.output_name], {spec.input_name: images})[0]
    gate = accuracy_gate(reference, run_plan(serialized, spec, images), precision)
    progress(str(gate))
    if not gate.passed:
        raise EngineError(f"{gate}; the plan was not written (try --precision fp32)")
    plan.parent.mkdir(parents=True, exist_ok=True)
    staging = plan.with_suffix(".tmp")
    staging.write_bytes(serialized)
    staging.replace(plan)
    metadata = target.as_metadata(built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                  accuracy_gate=dataclasses.asdict(gate))
    plan_metadata.write(plan, metadata)
    return metadata
