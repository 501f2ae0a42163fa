"""Read the committed model repository: config.pbtxt files in, typed specs of the bundle out.

Every fact the build needs (tensor names, shapes, batch sizes, preprocessing parameters, labels) is
read here from the `config.pbtxt` files, parsed with Triton's own `ModelConfig` protobuf schema.
Nothing else in the project repeats those facts as literals.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ModelConfig = model_config_pb2.ModelConfig
CONFIG_FILENAME = "config.pbtxt"
BYTES_PER_ELEMENT = {
    "TYPE_BOOL": 1, "TYPE_UINT8": 1, "TYPE_INT8": 1,
    "TYPE_UINT16": 2, "TYPE_INT16": 2, "TYPE_FP16": 2, "TYPE_BF16": 2,
    "TYPE_UINT32": 4, "TYPE_INT32": 4, "TYPE_FP32": 4,
    "TYPE_UINT64": 8, "TYPE_INT64": 8, "TYPE_FP64": 8,
}


class ConfigError(ValueError):
    """A config.pbtxt (or a file it names) is unreadable or does not fit the bundle."""

    def __init__(self, path: Path | str, message: str, field: str | None = None):
        self.path = Path(path)
        self.field = field
        where = f"{self.path}" + (f" [{field}]" if field else "")
        super().__init__(f"{where}: {message}")


def read_config(path: Path) -> ModelConfig:
    """Parse one config.pbtxt; syntax errors and unknown fields name the file and line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from exc
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(path, f"not a valid Triton model config: {exc}") from exc


def write_config(config: ModelConfig, path: Path, header: str = "") -> None:
    """Write `config` as text; `header` lines are written first as comments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comments + text_format.MessageToString(config))


def string_parameter(config: ModelConfig, key: str, path: Path, default: str | None = None) -> str:
    if key in config.parameters:
        return config.parameters[key].string_value
    if default is None:
        raise ConfigError(path, f'missing parameter "{key}"', field=f"parameters[{key}]")
    return default


def positive_int_parameter(config: ModelConfig, key: str, path: Path, default: str | None = None) -> int:
    text = string_parameter(config, key, path, default)
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(path, f'expected a positive whole number, found "{text}"', field=f"parameters[{key}]")
    return int(text)


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """What the DALI preprocessing model takes and produces, from its config."""

    model_name: str
    input_name: str
    output_name: str
    channels: int
    crop: tuple[int, int]  # (height, width)
    resize_shorter: int
    mean: tuple[float, float, float]  # 0..1 scale, RGB
    std: tuple[float, float, float]
    max_batch_size: int
    num_threads: int


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    """What the classifier takes and produces, from its config and label file."""

    model_name: str
    input_name: str
    input_dims: tuple[int, ...]
    output_name: str
    labels: tuple[str, ...]
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Bundle:
    """The committed repository: the ensemble and its two steps, found through the ensemble's wiring."""

    root: Path
    ensemble: ModelConfig
    preprocess_config: ModelConfig
    classifier_config: ModelConfig
    preprocess: PreprocessSpec
    classifier: ClassifierSpec

    @property
    def configs(self) -> dict[str, ModelConfig]:
        return {c.name: c for c in (self.ensemble, self.preprocess_config, self.classifier_config)}

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def config_path(self, name: str) -> Path:
        return self.root / name / CONFIG_FILENAME

    def label_path(self, model: ModelConfig) -> Path | None:
        for output in model.output:
            if output.label_filename:
                return (self.model_dir(model.name) / output.label_filename).resolve()
        return None


def _read_named(root: Path, name: str) -> ModelConfig:
    path = root / name / CONFIG_FILENAME
    config = read_config(path)
    if config.name and config.name != name:
        raise ConfigError(path, f'name "{config.name}" differs from its folder "{name}"', field="name")
    config.name = name
    return config


def _floats(text: str, path: Path, key: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(path, f'expected three comma-separated numbers, found "{text}"', field=f"parameters[{key}]")
    return values  # type: ignore[return-value]


def _preprocess_spec(config: ModelConfig, path: Path) -> PreprocessSpec:
    if len(config.input) != 1 or len(config.output) != 1:
        raise ConfigError(path, "the preprocessing model must have exactly one input and one output")
    dims = tuple(config.output[0].dims)
    if len(dims) != 3:
        raise ConfigError(path, f"output dims must be [channels, height, width], found {list(dims)}", field="output.dims")
    resize_shorter = positive_int_parameter(config, "resize_shorter", path)
    if resize_shorter < max(dims[1:]):
        raise ConfigError(
            path,
            f"resize_shorter={resize_shorter} is smaller than the crop {dims[1]}x{dims[2]}",
            field="parameters[resize_shorter]",
        )
    return PreprocessSpec(
        model_name=config.name,
        input_name=config.input[0].name,
        output_name=config.output[0].name,
        channels=dims[0],
        crop=(dims[1], dims[2]),
        resize_shorter=resize_shorter,
        mean=_floats(string_parameter(config, "mean", path), path, "mean"),
        std=_floats(string_parameter(config, "std", path), path, "std"),
        max_batch_size=config.max_batch_size,
        num_threads=positive_int_parameter(config, "num_threads", path, default="1"),
    )


def read_labels(path: Path) -> tuple[str, ...]:
    """Labels exactly as Triton reads them: one per line, every line counts (blank ones too)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(path, f"cannot read label file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"label file is not UTF-8 text: {exc}") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    for number, line in enumerate(lines, start=1):
        if not line.strip() or "\r" in line or line != line.strip():
            problem = "is blank" if not line.strip() else "has a carriage return (CRLF)" if "\r" in line else "has leading or trailing spaces"
            raise ConfigError(path, f"line {number} {problem}: Triton would serve {line!r} as a label")
    duplicates = sorted({label for label in lines if lines.count(label) > 1})
    if duplicates:
        raise ConfigError(path, f"duplicate labels {duplicates}")
    return tuple(lines)


def _classifier_spec(config: ModelConfig, model_dir: Path, path: Path) -> ClassifierSpec:
    if len(config.input) != 1 or len(config.output) != 1:
        raise ConfigError(path, "the classifier must have exactly one input and one output")
    output = config.output[0]
    if not output.label_filename:
        raise ConfigError(path, "the output needs a label_filename for the classification extension", field="output.label_filename")
    labels = read_labels(model_dir / output.label_filename)
    if list(output.dims) != [len(labels)]:
        raise ConfigError(
            path,
            f"output dims {list(output.dims)} do not match the {len(labels)} labels in {output.label_filename}",
            field="output.dims",
        )
    return ClassifierSpec(
        model_name=config.name,
        input_name=config.input[0].name,
        input_dims=tuple(config.input[0].dims),
        output_name=output.name,
        labels=labels,
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
    )


def _step(ensemble: ModelConfig, path: Path, role: str, *, consumes: str = "", produces: str = ""):
    """The ensemble step that consumes an ensemble input or produces an ensemble output."""
    for step in ensemble.ensemble_scheduling.step:
        if consumes in step.input_map.values() or produces in step.output_map.values():
            return step
    tensor = consumes or produces
    raise ConfigError(path, f'no step {"consumes" if consumes else "produces"} the ensemble tensor "{tensor}" (the {role} step)',
                      field="ensemble_scheduling.step")


def _check_step_maps(step, config: ModelConfig, ensemble_path: Path) -> None:
    for kind, mapping, tensors in (("input", step.input_map, config.input), ("output", step.output_map, config.output)):
        names = [t.name for t in tensors]
        for key in mapping:
            if key not in names:
                raise ConfigError(ensemble_path, f'"{key}" is not an {kind} of model "{config.name}" (its {kind}s: {names})',
                                  field=f"ensemble_scheduling.step[{config.name}].{kind}_map")


def _tensor_size(data_type: int, dims) -> int:
    count = 1
    for d in dims:
        count *= d
    return count * BYTES_PER_ELEMENT[model_config_pb2.DataType.Name(data_type)]


def _check_warmup_files(config: ModelConfig, model_dir: Path, path: Path) -> None:
    """Triton reads warmup files as raw tensors: their size must be exactly what the dims declare."""
    for warmup in config.model_warmup:
        for name, data in warmup.inputs.items():
            if not data.input_data_file:
                continue
            sample = model_dir / "warmup" / data.input_data_file
            field = f"model_warmup[{warmup.name}].inputs[{name}]"
            if not sample.is_file():
                raise ConfigError(path, f"warmup file {sample} not found", field=field)
            expected = _tensor_size(data.data_type, data.dims)
            if sample.stat().st_size != expected:
                raise ConfigError(path, f"warmup file {data.input_data_file} has {sample.stat().st_size} bytes but dims "
                                        f"{list(data.dims)} declare {expected}: set dims to the file size", field=field)


def load_bundle(root: Path) -> Bundle:
    """Find the ensemble in `root` and read it with its preprocessing and classifier steps."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(root, "model repository not found")
    ensembles = []
    for config_path in sorted(root.glob(f"*/{CONFIG_FILENAME}")):
        config = _read_named(root, config_path.parent.name)
        if config.platform == "ensemble":
            ensembles.append(config)
    if len(ensembles) != 1:
        raise ConfigError(root, f"expected exactly one ensemble model, found {len(ensembles)}")
    ensemble = ensembles[0]
    ensemble_path = root / ensemble.name / CONFIG_FILENAME
    if len(ensemble.input) != 1 or len(ensemble.output) != 1 or len(ensemble.ensemble_scheduling.step) != 2:
        raise ConfigError(ensemble_path, "expected one input (image bytes), one output (scores) and two steps "
                                         "(preprocess, classifier)")
    # The steps are found by the wiring, not by their order in the file.
    preprocess_step = _step(ensemble, ensemble_path, "preprocessing", consumes=ensemble.input[0].name)
    classifier_step = _step(ensemble, ensemble_path, "classifier", produces=ensemble.output[0].name)
    if preprocess_step is classifier_step:
        raise ConfigError(ensemble_path, "one step both consumes the image and produces the scores", field="ensemble_scheduling.step")
    preprocess_config = _read_named(root, preprocess_step.model_name)
    classifier_config = _read_named(root, classifier_step.model_name)
    preprocess_path = root / preprocess_config.name / CONFIG_FILENAME
    classifier_path = root / classifier_config.name / CONFIG_FILENAME
    for step, config in ((preprocess_step, preprocess_config), (classifier_step, classifier_config)):
        _check_step_maps(step, config, ensemble_path)
        if ensemble.max_batch_size > config.max_batch_size:
            raise ConfigError(ensemble_path, f"max_batch_size {ensemble.max_batch_size} exceeds {config.max_batch_size} "
                                             f'of step "{config.name}"', field="max_batch_size")
    link = set(preprocess_step.output_map.values()) & set(classifier_step.input_map.values())
    if not link:
        raise ConfigError(ensemble_path, f'no tensor flows from "{preprocess_config.name}" to "{classifier_config.name}"',
                          field="ensemble_scheduling.step")
    preprocess = _preprocess_spec(preprocess_config, preprocess_path)
    classifier = _classifier_spec(classifier_config, root / classifier_config.name, classifier_path)
    if preprocess.channels != 3:
        raise ConfigError(preprocess_path, f"output has {preprocess.channels} channels; the pipeline decodes RGB (3)", field="output.dims")
    if min(preprocess.std) <= 0:
        raise ConfigError(preprocess_path, f"std must be positive, found {list(preprocess.std)}", field="parameters[std]")
    if (preprocess.channels, *preprocess.crop) != classifier.input_dims:
        raise ConfigError(classifier_path, f"input dims {list(classifier.input_dims)} differ from the preprocessing output "
                                           f"{[preprocess.channels, *preprocess.crop]}", field="input.dims")
    if list(ensemble.output[0].dims) != [len(classifier.labels)]:
        raise ConfigError(ensemble_path, f"output dims {list(ensemble.output[0].dims)} differ from the classifier's "
                                         f"{[len(classifier.labels)]}", field="output.dims")
    _check_warmup_files(preprocess_config, root / preprocess_config.name, preprocess_path)
    _check_warmup_files(classifier_config, root / classifier_config.name, classifier_path)
    return Bundle(root, ensemble, preprocess_config, classifier_config, preprocess, classifier)
