"""Model intake: the user's model file in, a model the export stage can take out.

Accepted: an ONNX file (recognized by its content, whatever its name), a TorchScript archive
(`torch.jit.save`), or a pickled `torch.nn.Module` (`torch.save(model, "model.pth")`). The built-in
demo model is trained by `scripts.demo` instead. A torch model must take a float batch [N, 3, H, W]
preprocessed as the preprocessing config says, and return one score per label.

A pickle stores a module's class by name, not its code: the code must be importable when the file
loads. `code` folders (`--code DIR`) are searched for it, also for a class that was defined in the
training script itself (pickled as `__main__.ClassName`). Every refusal says what the file is and what
turns it into something this bundle takes.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import pickle
import struct
import sys
import types
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ONNX_SUFFIXES = {".onnx"}
# What a pickled module's own code may be, for `--code`: Python files, not those of environments in the folder.
SKIPPED_CODE_FOLDERS = {".git", ".venv", "venv", "__pycache__", "site-packages", "node_modules"}


class IntakeError(ValueError):
    """The model file cannot be loaded as any of the accepted formats."""


@dataclasses.dataclass
class LoadedModel:
    kind: str  # "onnx", "torchscript" or "pickle"
    path: Path
    module: Any = None  # the torch module; None for ONNX


# -- what a file looks like -------------------------------------------------------------------------
SIGNATURES = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras .h5 weights?): convert the model to ONNX (tf2onnx) first"),
    (b"\x93NUMPY", "a NumPy array (.npy), not a model"),
    (b"\xff\xd8\xff", "a JPEG image, not a model"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image, not a model"),
    (b"\x1f\x8b", "a gzip archive: unpack it first"),
    (b"PK\x03\x04", "a zip archive"),
)


def _is_onnx(path: Path) -> bool:
    """An ONNX ModelProto: a protobuf whose first field is ir_version (tag 0x08) and that has a graph."""
    with open(path, "rb") as handle:
        if handle.read(1) != b"\x08":
            return False
    import onnx

    try:
        return len(onnx.load(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # any parse failure means "not ONNX"
        return False


def _safetensors_keys(head: bytes, path: Path) -> list[str] | None:
    """The tensor names of a safetensors file (8-byte header length, then a JSON header), else None."""
    if len(head) < 10 or head[8:10] != b'{"':
        return None
    (length,) = struct.unpack("<Q", head[:8])
    if length > path.stat().st_size:
        return None
    try:
        with open(path, "rb") as handle:
            handle.seek(8)
            header = json.loads(handle.read(length))
    except ValueError:
        return None
    return [key for key in header if key != "__metadata__"]


def describe(path: Path) -> str:
    """What a file that is none of the accepted formats looks like."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file"
    with open(path, "rb") as handle:
        head = handle.read(64)
    for signature, what in SIGNATURES:
        if head.startswith(signature):
            if signature.startswith(b"PK"):
                with zipfile.ZipFile(path) as archive:
                    names = archive.namelist()
                return f"{what} of {len(names)} files ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
            return what
    if path.name == "saved_model.pb" or path.suffix in (".pb", ".pbtxt"):
        return "a TensorFlow graph: convert the model to ONNX (tf2onnx) first"
    lines = head.decode("utf-8", errors="ignore").splitlines()  # the 64 bytes may end inside a character
    if lines and lines[0].strip() and all(line.isprintable() for line in lines):
        return f"a text file (first line: {lines[0][:60]!r})"
    return f"{size} bytes of unknown binary data (first bytes: {head[:8].hex(' ')})"


# -- a state_dict is not a model --------------------------------------------------------------------
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")  # where training checkpoints keep the weights


def _tensors(value) -> int:
    import torch

    return sum(isinstance(v, torch.Tensor) for v in value.values()) if isinstance(value, dict) else 0


def _weights_error(path: Path, what: str, names: list[str], weights_expression: str) -> IntakeError:
    """Weights without a model: say so and show the two lines that make them a whole module."""
    return IntakeError(
        f"{path}: holds {what} ({len(names)} tensors: {', '.join(names[:3])}, ...), the weights without the code "
        "that uses them. Where your model's class is defined, two lines make it a whole module this bundle takes:\n"
        f"    model = YourModel(); model.load_state_dict({weights_expression}); model.eval()\n"
        '    torch.jit.script(model).save("model.pt")  # or: torch.save(model, "model.pth")'
    )


def _dict_error(path: Path, loaded: dict) -> IntakeError:
    """A state_dict, a training checkpoint that holds one, or some other dict."""
    if _tensors(loaded):
        return _weights_error(path, "a state_dict", [str(k) for k in loaded], f'torch.load("{path.name}")')
    key = next((k for k in STATE_DICT_KEYS if _tensors(loaded.get(k))), None)
    if key is None:
        return IntakeError(f"{path}: holds a dict (keys: {', '.join(map(str, list(loaded)[:6]))}), not a torch.nn.Module")
    return _weights_error(path, f"a training checkpoint whose {key!r} is a state_dict", [str(k) for k in loaded[key]],
                          f'torch.load("{path.name}")[{key!r}]')


# -- a pickled module's classes ---------------------------------------------------------------------
class MissingClass(Exception):
    def __init__(self, module: str, name: str, reason: str):
        super().__init__(f"{module}.{name}")
        self.module, self.name, self.reason = module, name, reason


def code_files(folders: Sequence[Path]) -> list[Path]:
    """The Python files of the `--code` folders, where a pickled module's classes are looked for."""
    return [path for folder in folders for path in sorted(Path(folder).rglob("*.py"))
            if not SKIPPED_CODE_FOLDERS & set(path.relative_to(folder).parts[:-1])]


def _defines(path: Path, name: str) -> bool:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), str(path))
    except SyntaxError:
        return False
    return any(isinstance(node, ast.ClassDef) and node.name == name for node in tree.body)


def _import_file(path: Path):
    """Import a user's file under a name of its own: its `if __name__ == "__main__":` part does not run."""
    name = "_adopted_code_" + "_".join(path.with_suffix("").parts[-3:]).replace("-", "_").replace(".", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _pickle_module(code: Sequence[Path]) -> types.ModuleType:
    """A `pickle` for torch.load whose classes also come from the `code` folders' files."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError) as exc:
                files = [path for path in code_files(code) if _defines(path, name)]
                if len(files) != 1:
                    reason = str(exc) if not files else f"defined in {len(files)} files of --code: {', '.join(map(str, files))}"
                    raise MissingClass(module, name, reason) from exc
                return getattr(_import_file(files[0]), name)

    namespace = types.ModuleType("pickle")  # torch.load reads the name (and refuses old dill by it)
    namespace.Unpickler, namespace.load, namespace.Pickler, namespace.dump = Unpickler, pickle.load, pickle.Pickler, pickle.dump
    return namespace


def _missing_class_error(path: Path, missing: MissingClass, code: Sequence[Path]) -> IntakeError:
    if missing.module == "__main__":
        where = (f"class {missing.name} was defined in the script that saved the model (module __main__): "
                 f"pass the folder of a .py file that defines class {missing.name}")
    else:
        top = missing.module.split(".")[0]
        where = (f"its class {missing.name} lives in module {missing.module}: pass the folder that holds "
                 f"{top}.py or the {top}/ package (or a .py file defining class {missing.name})")
    searched = f" (searched: {', '.join(map(str, code))})" if code else ""
    return IntakeError(
        f"{path}: a pickled torch module whose class {missing.module}.{missing.name} cannot be imported "
        f"({missing.reason}){searched}. A pickle stores a class's name, not its code: {where} with "
        "--code DIR (make adopt/build CODE=DIR; compose: MODEL_CODE in .env, a folder inside the project). "
        'Or save TorchScript, which carries its code: torch.jit.script(model).save("model.pt")'
    )


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives are zip files that hold a `constants.pkl` and compiled `code/`.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _is_torch_save(path: Path) -> bool:
    """torch.save's zip (a data.pkl inside) or its legacy format (a pickle protocol 2 header)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x80\x02"


def load(path: Path, code: Sequence[Path] = ()) -> LoadedModel:
    path = Path(path)
    code = tuple(Path(folder).resolve() for folder in code)
    if not path.is_file():
        raise IntakeError(f"{path}: model file not found")
    for folder in code:
        if not folder.is_dir():
            raise IntakeError(f"{folder}: the --code folder does not exist")
    if path.suffix.lower() in ONNX_SUFFIXES or _is_onnx(path):
        return LoadedModel("onnx", path)

    import torch

    if _is_torchscript(path):
        try:
            return LoadedModel("torchscript", path, torch.jit.load(str(path), map_location="cpu").eval())
        except RuntimeError as exc:
            raise IntakeError(f"{path}: looks like TorchScript but does not load: {exc}") from exc
    with open(path, "rb") as handle:
        safetensors = _safetensors_keys(handle.read(64), path)
    if safetensors is not None:
        raise _weights_error(path, "safetensors weights", safetensors, f'safetensors.torch.load_file("{path.name}")')
    if not _is_torch_save(path):
        raise IntakeError(f"{path}: not a model this bundle takes (ONNX, TorchScript, or a pickled torch module): "
                          f"it looks like {describe(path)}")
    # The model's own imports must resolve while it loads and when it first runs: the folders stay on the path.
    sys.path[:0] = [str(folder) for folder in code if str(folder) not in sys.path]
    try:
        # A pickled module runs code from the file on load: only bring models you trust.
        loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(code))
    except MissingClass as missing:
        raise _missing_class_error(path, missing, code) from None
    except Exception as exc:
        raise IntakeError(f"{path}: looks like a file torch.save wrote, but it does not load: {exc}") from exc
    if isinstance(loaded, dict):
        raise _dict_error(path, loaded)
    if not isinstance(loaded, torch.nn.Module):
        raise IntakeError(f"{path}: holds a {type(loaded).__name__}, not a torch.nn.Module")
    return LoadedModel("pickle", path, loaded.eval())
