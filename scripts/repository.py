"""Flavors: the committed (`gpu`) repository in, the `cpu` and `local` repositories out.

Each flavor is derived in code from the committed configs: parse with Triton's protobuf, change the
backend/platform and instance kind, resolve what ops left to the host (ONNX Runtime threads), write.
Model names, tensors, batching, warmup and labels stay as ops wrote them. Files beside a config
(labels, warmup samples) are copied; artifacts are placed in version folder 1.

- `cpu`:   DALI backend on CPU operators (a generated dali.py) + `onnxruntime_onnx`, all KIND_CPU
           (NGC image on a CPU host).
- `local`: python-backend models (`scripts/python_models/`) running the same serialized CPU DALI
           pipeline and the same ONNX model (the tritonserver shipped in nvidia-pytriton).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import client.image_formats
from scripts import constants, dali_runner, preprocess
from scripts.config import Bundle, ModelConfig, generated_header, model_config_pb2, write_config
from scripts.constants import (
    CONFIG_FILENAME,
    DALI_PIPELINE,
    GENERATED_FLAVORS,
    GPU,
    LOCAL,
    ONNX_MODEL,
    ORT_THREADS,
    PYTHON_MODEL,
    VERSION,
)

PYTHON_MODELS = Path(__file__).parent / "python_models"
IMAGE_CHECK = "imagecheck"  # the role, and the name of its model.py source in PYTHON_MODELS
# The python models import these helpers from their own version folder (Triton's python backend puts it
# on the import path): each is copied there, so no helper exists twice in the source. The image check
# runs in every flavor; the others are the local flavor's stand-ins for the DALI and ONNX Runtime backends.
PYTHON_HELPERS = {
    IMAGE_CHECK: (Path(client.image_formats.__file__),),
    "preprocess": tuple(Path(m.__file__) for m in (dali_runner, client.image_formats, constants)),
    "classifier": (Path(constants.__file__),),
}


@dataclasses.dataclass(frozen=True)
class Artifacts:
    onnx: Path  # model.onnx
    dali_cpu: Path  # model.dali serialized with CPU operators (the local flavor's python model runs it)


CPU_KIND = model_config_pb2.ModelInstanceGroup.KIND_CPU


def _to_cpu(config: ModelConfig) -> None:
    for group in config.instance_group:
        group.kind = CPU_KIND
        del group.gpus[:]


def _instances(config: ModelConfig) -> int:
    """How many instances the config's groups ask for (a group without a count is one)."""
    return sum(max(group.count, 1) for group in config.instance_group) or 1


def _unbatched_dali(config: ModelConfig, threads: int) -> None:
    """The DALI step of the cpu flavor: one request per execution, ops' CPU threads spent as instances.

    When dynamic batching merges requests, the DALI backend gathers their inputs with cudaMemcpyAsync,
    which fails on a host without a CUDA driver (cudaErrorInsufficientDriver; dali_backend
    src/dali_executor/io_buffer.cc; tests/test_cpu_flavor.py reproduces it, README "The four ways to
    run" has the figures). One request per execution never takes that path. Parallelism then comes from instances:
    ops' budget (instances x num_threads) becomes that many single-threaded instances, since one
    image per execution keeps a second pipeline thread idle. Measured on 2 cores, 16 concurrent
    clients: 1 instance x 2 threads 300 images/s, 2 instances x 1 thread 496 images/s.
    """
    config.ClearField("dynamic_batching")
    instances = _instances(config)
    del config.instance_group[1:]
    group = config.instance_group[0] if config.instance_group else config.instance_group.add(kind=CPU_KIND)
    group.count = instances * threads
    config.parameters["num_threads"].string_value = "1"


SHARE_THE_CORES = "0"  # ops' value for: this host's cores, shared among the classifier's instances


def host_cores() -> int:
    """The cores this process may run on (a container's cpuset, not the machine's)."""
    return len(os.sched_getaffinity(0))


def _shared_cores(config: ModelConfig, cores: int) -> None:
    """ONNX Runtime threads per instance when ops leave them to the host (0, or no value): the host's
    cores divided among the instances, at least one each.

    ONNX Runtime's own 0 gives every session one thread per core, so two instances would run twice as
    many threads as cores, and the DALI threads beside them more still. Measured on 2 cores, the
    committed and the candidate loaded alternately on one live server, best of 8/16 clients, three
    rounds (docs/performance.md): the ResNet-50-sized model, local flavor, 1 instance x 2 threads
    21.5 / 24.3 / 21.2 images/s, 2 x 1 25.7 / 28.9 / 25.3; the demo, cpu flavor, 488 / 461 / 445
    against 530 / 530 / 459. A single-threaded session also has no thread pool to spin-wait, which the
    onnxruntime backend cannot turn off. Resolved here, where the flavor is built on the host that
    serves it (`make serve`, compose's builder-cpu), so both ONNX Runtime flavors get the same number.
    """
    value = config.parameters[ORT_THREADS].string_value if ORT_THREADS in config.parameters else SHARE_THE_CORES
    if value.strip() != SHARE_THE_CORES:
        return  # ops' number, or a typo the server refuses with its own message
    config.parameters[ORT_THREADS].string_value = str(max(1, cores // _instances(config)))


def flavor_config(bundle: Bundle, name: str, flavor: str, cores: int | None = None) -> ModelConfig:
    """The config of model `name` of `bundle` for `flavor`; `cores`: the serving host's (default: this one's)."""
    derived = ModelConfig()
    derived.CopyFrom(bundle.configs[name])
    if name == bundle.ensemble.name:
        return derived
    _to_cpu(derived)
    if bundle.check is not None and name == bundle.check.model_name:
        return derived  # a python model, on the CPU, in every flavor
    if name == bundle.classifier.model_name:
        _shared_cores(derived, host_cores() if cores is None else cores)
    if flavor == LOCAL:
        derived.platform = ""
        derived.backend = "python"
    elif name == bundle.classifier.model_name:
        derived.platform = "onnxruntime_onnx"
        derived.backend = ""
    else:
        _unbatched_dali(derived, bundle.preprocess.num_threads)
    return derived


def dali_model_files(bundle: Bundle, flavor: str) -> dict[str, str]:
    """{file name: text} of the version folder of `flavor`'s DALI model (cpu, gpu): a `dali.py` that the
    DALI backend serializes with the server's own DALI when it loads the model, and the graph it imports."""
    source = bundle.config_path(bundle.preprocess.model_name).relative_to(bundle.root.parent)
    return preprocess.dali_definition(bundle.preprocess, flavor, source)


def gpu_model_files(bundle: Bundle) -> dict[Path, str]:
    """{path: text} of what the GPU box's builder writes into the committed repository besides the engine:
    the preprocessing model's dali.py (and the graph it imports), the image check's model.py (and helpers)."""
    files = {bundle.artifact(bundle.preprocess.model_name, name): text for name, text in dali_model_files(bundle, GPU).items()}
    if bundle.check is not None:
        files.update({bundle.artifact(bundle.check.model_name, name): source.read_text()
                      for name, source in python_model_files(IMAGE_CHECK).items()})
    return files


def python_model_sources() -> list[Path]:
    """Every file the python models are made of."""
    models = {PYTHON_MODELS / f"{role}.py" for role in PYTHON_HELPERS}
    return sorted(models | {path for paths in PYTHON_HELPERS.values() for path in paths})


def python_model_files(role: str) -> dict[str, Path]:
    """The version folder of the python model of `role`: model.py and its helpers, by destination name."""
    return {PYTHON_MODEL: PYTHON_MODELS / f"{role}.py", **{path.name: path for path in PYTHON_HELPERS[role]}}


def _artifacts_for(role: str, flavor: str, artifacts: Artifacts) -> dict[str, Path]:
    """Files copied into the version folder, by destination name."""
    if role == IMAGE_CHECK:
        return python_model_files(role)
    if role == "classifier":
        files = {ONNX_MODEL: artifacts.onnx}
    elif role == "preprocess" and flavor == LOCAL:
        files = {DALI_PIPELINE: artifacts.dali_cpu}
    else:
        files = {}  # the cpu flavor's DALI model is written, not copied: see generate
    return {**files, **python_model_files(role)} if flavor == LOCAL and role in PYTHON_HELPERS else files


def _copy_beside_config(source_dir: Path, target_dir: Path) -> None:
    """Copy labels, warmup samples and the like; skip the config and version folders."""
    for item in source_dir.iterdir():
        if item.name == CONFIG_FILENAME or (item.is_dir() and item.name.isdigit()):
            continue
        if item.is_dir():
            shutil.copytree(item, target_dir / item.name)
        else:
            shutil.copy2(item, target_dir / item.name)


def generate(bundle: Bundle, flavor: str, target: Path, artifacts: Artifacts) -> Path:
    """Write the `flavor` repository to `target` (replacing it whole) and return `target`."""
    if flavor not in GENERATED_FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}; expected one of {GENERATED_FLAVORS}")
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    roles = {
        bundle.ensemble.name: "ensemble",
        **({bundle.check.model_name: IMAGE_CHECK} if bundle.check else {}),
        bundle.preprocess_config.name: "preprocess",
        bundle.classifier_config.name: "classifier",
    }
    for name, role in roles.items():
        model_dir = staging / name
        (model_dir / VERSION).mkdir(parents=True)
        # Named relative to the repository's folder: the same edit makes the same files wherever the checkout is.
        header = generated_header(flavor, bundle.config_path(name).relative_to(bundle.root.parent))
        write_config(flavor_config(bundle, name, flavor), model_dir / CONFIG_FILENAME, header)
        _copy_beside_config(bundle.model_dir(name), model_dir)
        for filename, source in _artifacts_for(role, flavor, artifacts).items():
            shutil.copy2(source, model_dir / VERSION / filename)
        if role == "preprocess" and flavor != LOCAL:
            for filename, text in dali_model_files(bundle, flavor).items():
                (model_dir / VERSION / filename).write_text(text)
        _keep_if_unchanged(target / name, model_dir)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _keep_if_unchanged(current: Path, regenerated: Path) -> None:
    """Keep the current copy of a model whose files came out the same, modification times included.

    A server in explicit mode reloads a model when anything in its folder is newer than what it
    loaded: an untouched model must not look touched, so that `apply` reloads exactly what changed.
    """
    if current.is_dir() and _contents(current) == _contents(regenerated):
        shutil.rmtree(regenerated)
        shutil.copytree(current, regenerated)  # copy2 and copystat: the times come along
