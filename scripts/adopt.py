"""Adopt a model: a trained classifier file (and its labels) in, the committed configs edited to fit it.

`python -m scripts adopt MODEL` looks at the model (ONNX: its input and output shapes; torch: a trial
forward pass at `--input-size`), then changes in the committed configs exactly the values that depend
on it: the crop size (preprocessing output, classifier input and its warmup), the resize, the
normalization when given, and the number of scores (classifier and ensemble outputs), and writes
`labels.txt`. The edits are made where the values stand (`config_text`), so ops' comments and layout
stay; the result is validated before anything is written, and written only with `--yes`. The model
is recorded for the build (`build.ModelChoice`), so `make serve` builds and serves it next.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scripts import intake
from scripts.build import ModelChoice, record_adopted
from scripts.config import Bundle, ConfigError, ModelConfig, read_labels
from scripts.config_text import Edits, InPlaceError, edit_in_place, unified_diff, write_edits
from scripts.constants import CONFIG_FILENAME
from scripts.layout import Layout
from scripts.validate import check_edits, checked_bundle

# Without --resize-shorter, a new crop keeps the ImageNet convention: resize the shorter side to 256, crop 224.
RESIZE_PER_CROP = 256 / 224
CHANNELS = 3  # the preprocessing hands the model RGB
TRIAL_BATCH = 2  # a batch the trial forward pass runs: more than one, so a batch fixed to 1 shows
DYNAMIC_BATCH_FIX = ("re-export it with a dynamic batch: torch.onnx.export(model, example, \"model.onnx\", "
                     "input_names=[\"input\"], output_names=[\"output\"], "
                     "dynamic_axes={\"input\": {0: \"batch\"}, \"output\": {0: \"batch\"}})")


class AdoptError(ValueError):
    """The model does not fit this bundle (or its labels), and what to do about it."""


@dataclasses.dataclass(frozen=True)
class Signature:
    """What the model takes and returns."""

    kind: str  # intake's kind: onnx, torchscript, pickle
    size: tuple[int, int]  # (height, width) of the RGB images it takes
    scores: int  # scores per image


def parse_size(text: str) -> tuple[int, int]:
    """"224" or "224x192" (height x width)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"input size {text!r}: expected N or HxW, positive whole numbers (224, 96x128)")
    return (int(parts[0]), int(parts[-1]))


def _score_count(path: Path, shape) -> int:
    """The number of scores per image, from the shape the trial batch returned."""
    if len(shape) != 2 or shape[0] != TRIAL_BATCH:
        raise AdoptError(f"{path}: returns shape {list(shape)} for {TRIAL_BATCH} images; expected [{TRIAL_BATCH}, classes]")
    return int(shape[1])


def _onnx_signature(path: Path, size: tuple[int, int] | None) -> Signature:
    import numpy as np
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise AdoptError(f"{path}: takes {len(inputs)} inputs and returns {len(graph.output)} outputs; a classifier here "
                         "takes one image batch [N, 3, H, W] and returns one score batch [N, classes]")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != CHANNELS):
        raise AdoptError(f'{path}: input "{inputs[0].name}" has shape {dims}; it must be [N, 3, H, W] (a batch of RGB images)')
    if isinstance(dims[0], int):
        raise AdoptError(f'{path}: input "{inputs[0].name}" has a fixed batch dimension {dims[0]} (shape {dims}): the '
                         f"server batches requests together, so it must be free: {DYNAMIC_BATCH_FIX}")
    fixed = (dims[2], dims[3]) if all(isinstance(d, int) for d in dims[2:]) else None
    if fixed and size and size != fixed:
        raise AdoptError(f"{path}: takes {fixed[0]}x{fixed[1]} images, --input-size says {size[0]}x{size[1]}")
    size = size or fixed
    if size is None:
        raise AdoptError(f"{path}: takes images of any size ({dims}): pass --input-size (for example 224)")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        (scores,) = session.run(None, {inputs[0].name: np.zeros((TRIAL_BATCH, CHANNELS, *size), np.float32)})
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise AdoptError(f"{path}: ONNX Runtime fails on a batch of {TRIAL_BATCH} RGB {size[0]}x{size[1]} images: {exc}") from exc
    return Signature("onnx", size, _score_count(path, scores.shape))


def _torch_signature(loaded: intake.LoadedModel, size: tuple[int, int] | None) -> Signature:
    import torch

    path, module = loaded.path, loaded.module
    if size is None:
        raise AdoptError(f"{path}: a torch model does not record the image size it was trained on: "
                         "pass --input-size (224 for ImageNet-style models, or HxW)")
    # TorchScript keeps the layers' class names, not their classes.
    first_conv = next((m for m in module.modules()
                       if isinstance(m, torch.nn.Conv2d) or getattr(m, "original_name", "") == "Conv2d"), None)
    channels = first_conv.weight.shape[1] * getattr(first_conv, "groups", 1) if first_conv is not None else CHANNELS
    if channels != CHANNELS:
        raise AdoptError(f"{path}: its first convolution takes {channels} channels; the preprocessing hands it "
                         f"{CHANNELS} (RGB), as [N, 3, H, W]")

    def trial(batch: int):
        with torch.no_grad():
            return module(torch.zeros((batch, CHANNELS, *size), dtype=torch.float32))

    def runs_on_one() -> bool:
        try:
            return trial(1).shape[0] == 1
        except Exception:  # whatever the user's forward raises
            return False

    try:
        scores = trial(TRIAL_BATCH)
    except Exception as exc:  # whatever the user's forward raises (TorchScript: a long trace, its cause last)
        cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if not runs_on_one():
            raise AdoptError(f"{path}: a trial forward pass on [{TRIAL_BATCH}, 3, {size[0]}, {size[1]}] fails: {cause}") from exc
        scores = None
    if not isinstance(scores, torch.Tensor) and scores is not None:
        raise AdoptError(f"{path}: returns a {type(scores).__name__}; a classifier here returns one tensor [N, classes]")
    if scores is None or (scores.ndim >= 1 and scores.shape[0] != TRIAL_BATCH and runs_on_one()):
        raise AdoptError(f"{path}: runs on one image but not on a batch of {TRIAL_BATCH}: its batch dimension is fixed to 1. "
                         "The server batches requests together: reshape with x.flatten(1) or x.reshape(x.shape[0], -1), "
                         "not to a fixed batch, then save the model again")
    return Signature(loaded.kind, size, _score_count(path, scores.shape))


def signature(model: Path, size: tuple[int, int] | None = None, code: tuple[Path, ...] = ()) -> Signature:
    loaded = intake.load(model, code)
    return _onnx_signature(model, size) if loaded.kind == "onnx" else _torch_signature(loaded, size)


@dataclasses.dataclass
class Plan:
    """What adopting a model changes: each file's text before and after."""

    model: Path
    code: tuple[Path, ...]
    signature: Signature
    resize_shorter: int
    labels: tuple[str, ...]
    changes: Edits  # the configs and labels.txt, where they change

    def diff(self, project: Path, labels_in_full: bool = False) -> str:
        """A unified diff of the configs (and of labels.txt when asked; else one line about it)."""
        if labels_in_full:
            return unified_diff(self.changes, project)
        configs = {path: texts for path, texts in self.changes.items() if path.name == CONFIG_FILENAME}
        labels = [(path, before) for path, (before, _) in self.changes.items() if path.name != CONFIG_FILENAME]
        return unified_diff(configs, project) + "".join(
            f"{path.relative_to(project) if path.is_relative_to(project) else path}: {len(before.splitlines())} labels "
            f"-> {len(self.labels)} labels ({', '.join(self.labels[:4])}{', ...' if len(self.labels) > 4 else ''})\n"
            for path, before in labels)


def _three(values: list[float] | None, current: tuple[float, float, float], what: str) -> tuple[float, float, float]:
    if values is None:
        return current
    if len(values) != 3:
        raise AdoptError(f"--{what}: three numbers, R G B (0..1 scale), not {len(values)}")
    return tuple(values)  # type: ignore[return-value]


def _wanted(bundle: Bundle, sig: Signature, resize_shorter: int, mean, std) -> dict[str, ModelConfig]:
    """The committed configs with the values that depend on the model changed."""
    dims = [CHANNELS, *sig.size]
    preprocess, classifier, ensemble = (type(c)() for c in (bundle.preprocess_config, bundle.classifier_config, bundle.ensemble))
    preprocess.CopyFrom(bundle.preprocess_config)
    classifier.CopyFrom(bundle.classifier_config)
    ensemble.CopyFrom(bundle.ensemble)
    preprocess.output[0].dims[:] = dims
    parameters = preprocess.parameters
    parameters["resize_shorter"].string_value = str(resize_shorter)
    for key, values in (("mean", mean), ("std", std)):
        if tuple(values) != getattr(bundle.preprocess, key):
            parameters[key].string_value = ",".join(f"{v:g}" for v in values)
    classifier.input[0].dims[:] = dims
    for warmup in classifier.model_warmup:
        if bundle.classifier.input_name in warmup.inputs:
            warmup.inputs[bundle.classifier.input_name].dims[:] = dims
    classifier.output[0].dims[:] = [sig.scores]
    ensemble.output[0].dims[:] = [sig.scores]
    return {config.name: config for config in (preprocess, classifier, ensemble)}


def plan(layout: Layout, model: Path, labels_file: Path | None = None, size: tuple[int, int] | None = None,
         resize_shorter: int | None = None, mean: list[float] | None = None, std: list[float] | None = None,
         code: tuple[Path, ...] = ()) -> Plan:
    """Look at the model, and work out (and validate, on a copy) the edits that make the configs fit it."""
    bundle = checked_bundle(layout.repository)
    sig = signature(model, size, code)
    labels_path = bundle.label_path(bundle.classifier_config)
    labels = read_labels(labels_file) if labels_file else bundle.classifier.labels
    if len(labels) != sig.scores:
        where = labels_file or labels_path
        fix = "" if labels_file else f": pass --labels FILE, one label per line, {sig.scores} lines"
        raise AdoptError(f"{model}: returns {sig.scores} scores per image, but {where} has {len(labels)} labels{fix}")
    if resize_shorter is None:
        keep = sig.size == bundle.preprocess.crop
        resize_shorter = bundle.preprocess.resize_shorter if keep else round(max(sig.size) * RESIZE_PER_CROP)
    if resize_shorter < max(sig.size):
        raise AdoptError(f"--resize-shorter {resize_shorter} is smaller than the {sig.size[0]}x{sig.size[1]} crop")
    wanted = _wanted(bundle, sig, resize_shorter, _three(mean, bundle.preprocess.mean, "mean"),
                     _three(std, bundle.preprocess.std, "std"))
    changes: Edits = {}
    for name, config in wanted.items():
        path = bundle.config_path(name)
        before = path.read_text()
        try:
            after = edit_in_place(before, config)
        except InPlaceError as exc:
            raise AdoptError(f"{path}: {exc}") from exc
        if after != before:
            changes[path] = (before, after)
    labels_text = "".join(f"{label}\n" for label in labels)
    if labels_path.read_text() != labels_text:
        changes[labels_path] = (labels_path.read_text(), labels_text)
    try:
        check_edits(layout.repository, {path: after for path, (_, after) in changes.items()})
    except ConfigError as exc:
        raise AdoptError(f"the edited configs do not validate: {exc}") from exc
    return Plan(model, code, sig, resize_shorter, labels, changes)


def write(plan: Plan, layout: Layout) -> Path:
    """Write the edited files and record the model for the build."""
    write_edits(plan.changes)
    return record_adopted(layout, ModelChoice(str(plan.model), tuple(str(folder) for folder in plan.code)))


def summary(plan: Plan) -> str:
    sig = plan.signature
    height, width = sig.size
    return (f"adopt: model={plan.model.name} kind={sig.kind} input={height}x{width} resize_shorter={plan.resize_shorter} "
            f"labels={len(plan.labels)} files_changed={len(plan.changes)}")
