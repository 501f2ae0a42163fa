"""Flavors: the committed (`gpu`) repository in, the `cpu` and `local` repositories out.

Each flavor is derived in code from the committed configs: parse with Triton's protobuf, change the
backend/platform and instance kind, write. Model names, tensors, batching, warmup and labels stay
as ops wrote them. Files beside a config (labels, warmup samples) are copied; artifacts are placed
in version folder 1.

- `cpu`:   DALI backend on CPU operators + `onnxruntime_onnx`, all KIND_CPU (NGC image on a CPU host).
- `local`: python-backend models (`scripts/local_models/`) running the same serialized CPU DALI
           pipeline and the same ONNX model (the tritonserver shipped in nvidia-pytriton).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import client.image_formats
from scripts import constants, dali_runner
from scripts.config import Bundle, ModelConfig, generated_header, write_config
from scripts.constants import CONFIG_FILENAME, DALI_PIPELINE, GENERATED_FLAVORS, LOCAL, ONNX_MODEL, PYTHON_MODEL, VERSION

LOCAL_MODELS = Path(__file__).parent / "local_models"
# The local flavor's python models import these helpers from their own version folder (Triton's python
# backend puts it on the import path): each is copied there, so no helper exists twice in the source.
LOCAL_HELPERS = {
    "preprocess": tuple(Path(m.__file__) for m in (dali_runner, client.image_formats, constants)),
    "classifier": (Path(constants.__file__),),
}


@dataclasses.dataclass(frozen=True)
class Artifacts:
    onnx: Path  # model.onnx
    dali_cpu: Path  # model.dali serialized with CPU operators


def _to_cpu(config: ModelConfig) -> None:
    for group in config.instance_group:
        group.kind = group.KIND_CPU
        del group.gpus[:]


def flavor_config(config: ModelConfig, role: str, flavor: str) -> ModelConfig:
    """The config of one model (`role`: "ensemble", "preprocess" or "classifier") for `flavor`."""
    derived = ModelConfig()
    derived.CopyFrom(config)
    if role == "ensemble":
        return derived
    _to_cpu(derived)
    if flavor == LOCAL:
        derived.platform = ""
        derived.backend = "python"
    elif role == "classifier":
        derived.platform = "onnxruntime_onnx"
        derived.backend = ""
    return derived


def local_model_sources() -> list[Path]:
    """Every file the local flavor's python models are made of."""
    models = {LOCAL_MODELS / f"{role}.py" for role in LOCAL_HELPERS}
    return sorted(models | {path for paths in LOCAL_HELPERS.values() for path in paths})


def _artifacts_for(role: str, flavor: str, artifacts: Artifacts) -> dict[str, Path]:
    """Files for the version folder, by destination name."""
    files = {"preprocess": {DALI_PIPELINE: artifacts.dali_cpu}, "classifier": {ONNX_MODEL: artifacts.onnx}}.get(role, {})
    if flavor == LOCAL and role in LOCAL_HELPERS:
        files = {**files, PYTHON_MODEL: LOCAL_MODELS / f"{role}.py", **{p.name: p for p in LOCAL_HELPERS[role]}}
    return files


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
        bundle.preprocess_config.name: "preprocess",
        bundle.classifier_config.name: "classifier",
    }
    for name, config in bundle.configs.items():
        role = roles[name]
        model_dir = staging / name
        (model_dir / VERSION).mkdir(parents=True)
        header = generated_header(flavor, bundle.config_path(name))
        write_config(flavor_config(config, role, flavor), model_dir / CONFIG_FILENAME, header)
        _copy_beside_config(bundle.model_dir(name), model_dir)
        for filename, source in _artifacts_for(role, flavor, artifacts).items():
            shutil.copy2(source, model_dir / VERSION / filename)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
