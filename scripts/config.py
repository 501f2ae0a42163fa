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
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(path, f"cannot read label file: {exc.strerror}") from exc
    return tuple(line.strip() for line in lines if line.strip())


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
    steps = ensemble.ensemble_scheduling.step
    ensemble_path = root / ensemble.name / CONFIG_FILENAME
    if len(steps) != 2:
        raise ConfigError(ensemble_path, f"expected two steps (preprocess, classifier), found {len(steps)}", field="ensemble_scheduling.step")
    preprocess_config = _read_named(root, steps[0].model_name)
    classifier_config = _read_named(root, steps[1].model_name)
    preprocess = _preprocess_spec(preprocess_config, root / preprocess_config.name / CONFIG_FILENAME)
    classifier = _classifier_spec(classifier_config, root / classifier_config.name, root / classifier_config.name / CONFIG_FILENAME)
    if (preprocess.channels, *preprocess.crop) != classifier.input_dims:
        raise ConfigError(
            root / classifier_config.name / CONFIG_FILENAME,
            f"input dims {list(classifier.input_dims)} differ from the preprocessing output "
            f"{[preprocess.channels, *preprocess.crop]}",
            field="input.dims",
        )
    return Bundle(root, ensemble, preprocess_config, classifier_config, preprocess, classifier)
