"""ONNX export: a torch module (or a user's ONNX file) in, a checked `model.onnx` out.

The export names its tensors and shapes from the classifier config, with a dynamic batch
dimension. `verify` checks the file with `onnx.checker`, checks its inputs and outputs against the
config, and compares ONNX Runtime with torch on real preprocessed images.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from scripts.config import ClassifierSpec

OPSET = 17
# Float32 ONNX Runtime vs torch on the same CPU: differences are rounding, ~1e-6 on probabilities.
TOLERANCE = 1e-4


class ExportError(ValueError):
    """The model does not export, or the export does not match the config or torch."""


@dataclasses.dataclass
class VerifyReport:
    max_abs_error: float | None  # None when there is no torch reference (a user's ONNX file)
    tolerance: float
    samples: int

    def __str__(self) -> str:
        if self.max_abs_error is None:
            return f"ONNX Runtime ran {self.samples} images (no torch reference to compare)"
        return (f"ONNX Runtime vs torch on {self.samples} images: max abs error {self.max_abs_error:.2e} "
                f"(tolerance {self.tolerance:.0e})")


def export(module, spec: ClassifierSpec, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((2, *spec.input_dims), dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated for new code, but it is the one that takes
        # TorchScript models too; its deprecation notice says nothing about this export.
        warnings.simplefilter("ignore", DeprecationWarning)
        # InstanceNorm without running stats normalizes with the input's own statistics in eval mode
        # too, which is exactly what "train=True" exports.
        warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,  # torch.export cannot take TorchScript modules; this exporter takes both
            input_names=[spec.input_name],
            output_names=[spec.output_name],
            dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
            opset_version=OPSET,
        )


def adopt_onnx(source: Path, spec: ClassifierSpec, target: Path) -> None:
    """Copy a user's ONNX file with its one input and one output named as the classifier config says
    (exporters name them "input", "output", "x.1", ...); the user's file is left as it is."""
    import onnx

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    taken = {name for node in graph.node for name in (*node.input, *node.output)} | initializers
    renames = {}
    for tensors, name in ((inputs, spec.input_name), (list(graph.output), spec.output_name)):
        if len(tensors) == 1 and tensors[0].name != name and name not in taken:
            renames[tensors[0].name] = name
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)
    onnx.save(model, str(target))


def _dims(value_info) -> list[int | str]:
    """Static dims as ints, symbolic ones by name ("?" when unnamed)."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def check_signature(path: Path, spec: ClassifierSpec) -> None:
    """The ONNX graph's single input and output have the config's names, FP32 type and dims."""
    import onnx

    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker rejects the model: {exc}") from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    expected = (
        ("input", inputs, spec.input_name, list(spec.input_dims)),
        ("output", list(model.graph.output), spec.output_name, [len(spec.labels)]),
    )
    for kind, tensors, name, dims in expected:
        if len(tensors) != 1:
            raise ExportError(f"{path}: expected one {kind}, found {[t.name for t in tensors]}")
        tensor = tensors[0]
        if tensor.name != name:
            raise ExportError(
                f'{path}: the {kind} is named "{tensor.name}" but the classifier config says "{name}": '
                f"rename it in the config (and the ensemble's map) or in the model"
            )
        if tensor.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f'{path}: {kind} "{name}" must be float32')
        found = _dims(tensor)
        if len(found) != len(dims) + 1 or any(isinstance(f, int) and f != d for f, d in zip(found[1:], dims, strict=True)):
            raise ExportError(f'{path}: {kind} "{name}" has shape {found}, expected [batch, {", ".join(map(str, dims))}]')
        if isinstance(found[0], int):
            raise ExportError(f'{path}: {kind} "{name}" has a fixed batch dimension {found[0]}; export it as dynamic')


def verify(path: Path, spec: ClassifierSpec, inputs: np.ndarray, module=None, tolerance: float = TOLERANCE) -> VerifyReport:
    """Check the file and run it on `inputs` [N, C, H, W] with ONNX Runtime; compare with torch if given."""
    import onnxruntime as ort

    check_signature(path, spec)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([spec.output_name], {spec.input_name: inputs.astype(np.float32)})[0]
    if got.shape != (len(inputs), len(spec.labels)):
        raise ExportError(f"{path}: ONNX Runtime returned shape {got.shape}, expected {(len(inputs), len(spec.labels))}")
    if module is None:
        return VerifyReport(None, tolerance, len(inputs))
    import torch

    with torch.no_grad():
        want = module(torch.from_numpy(inputs)).numpy()
    error = float(np.abs(got - want).max())
    if not error <= tolerance:
        raise ExportError(f"{path}: ONNX Runtime differs from torch by {error:.3e} (tolerance {tolerance:.0e})")
    return VerifyReport(error, tolerance, len(inputs))
