"""Model intake: the user's model file in, a model the export stage can take out.

Accepted: an ONNX file (`.onnx`, used as is), a TorchScript archive (`torch.jit.save`), or a pickled
`torch.nn.Module` (`torch.save(model, "model.pth")`). The built-in demo model is trained by
`scripts.demo` instead. A torch model must take a float batch [N, C, H, W] preprocessed as the
preprocessing config says, and return one score per label.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Any

ONNX_SUFFIXES = {".onnx"}


class IntakeError(ValueError):
    """The model file cannot be loaded as any of the accepted formats."""


@dataclasses.dataclass
class LoadedModel:
    kind: str  # "onnx", "torchscript" or "pickle"
    path: Path
    module: Any = None  # the torch module; None for ONNX


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives are zip files that hold a `constants.pkl` and compiled `code/`.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def load(path: Path) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise IntakeError(f"{path}: model file not found")
    if path.suffix.lower() in ONNX_SUFFIXES:
        return LoadedModel("onnx", path)

    import torch

    if _is_torchscript(path):
        try:
            return LoadedModel("torchscript", path, torch.jit.load(str(path), map_location="cpu").eval())
        except RuntimeError as exc:
            raise IntakeError(f"{path}: looks like TorchScript but does not load: {exc}") from exc
    try:
        # A pickled module runs code from the file on load: only bring models you trust.
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise IntakeError(
            f"{path}: not an ONNX file (.onnx), a TorchScript archive, or a pickled torch module ({exc})"
        ) from exc
    if not isinstance(module, torch.nn.Module):
        kind = type(module).__name__
        hint = ""
        if kind in ("dict", "OrderedDict"):
            hint = " (a state_dict: save the whole module with torch.save(model, path), or script it)"
        raise IntakeError(f"{path}: holds a {kind}, not a torch.nn.Module{hint}")
    return LoadedModel("pickle", path, module.eval())
