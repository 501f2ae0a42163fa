"""Validate: a model repository in, findings out (file, line, model, field, expected, found, hint).

Catches in seconds, with no GPU and no server, the mistakes Triton would only report when it fails
to load a model: schema typos, folder layout, ensemble wiring, artifacts that do not fit their
configs, labels, batching, instance kinds and warmup data. Every config is parsed with Triton's
`ModelConfig` protobuf schema.

Severities: `error` (Triton would refuse or misbehave), `warning` (legal but likely a mistake; fails
under --strict), `note` (information, e.g. an artifact that a later build step produces).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf import text_format

from client.defaults import ADMIN_KEY_ENV
from scripts import plan_metadata
from scripts.config import (
    BYTES_PER_ELEMENT,
    GENERATED_MARKER,
    Bundle,
    ConfigError,
    ModelConfig,
    bundle_steps,
    image_check_problems,
    label_problems,
    load_bundle,
    model_config_pb2,
    preprocess_problems,
    read_config,
)
from scripts.constants import (
    ARTIFACTS,
    BACKEND_PLATFORM,
    COMMITTED_FLAVOR,
    CONFIG_FILENAME,
    CPU_ONLY_FLAVORS,
    DALI_PIPELINE,
    DALI_SCRIPT,
    ONNX_MODEL,
    TENSORRT_PLAN,
    VERSION,
    WARMUP_DIR,
)

ERROR, WARNING, NOTE = "error", "warning", "note"
MAX_SANE_QUEUE_DELAY_US = 100_000  # 100 ms: beyond this a "batching delay" is a latency bug

# What produces each platform's artifact in this project.
PRODUCERS = {
    "tensorrt_plan": "the engine build on the GPU box (docker compose `builder`)",
    "onnxruntime_onnx": "`make build` (ONNX export)",
    "dali": "`make build` (CPU flavors) or the compose `builder` (gpu flavor)",
    "python": "`make build` (cpu and local flavors) or the compose `builder` (gpu flavor)",
}
# The one-line hint of each finding code (a call may give a more specific one).
HINTS = {
    "repository-missing": "pass the folder that holds one sub-folder per model",
    "repository-empty": "each model needs <repository>/<model>/config.pbtxt",
    "parse-error": "check the spelling of the field named in the message against Triton's model_config.proto",
    "missing-label-file": "label_filename is relative to the model's folder",
    "ensemble-no-steps": "list the models to run in ensemble_scheduling { step [ ... ] }",
    "step-model-missing": "model_name must be the folder name of a model in this repository",
    "map-key-unknown": "input_map/output_map keys are the step model's tensor names; values are ensemble tensors",
    "input-not-mapped": "every non-optional input of a step needs an input_map entry",
    "tensor-produced-twice": "give each step output its own ensemble tensor name",
    "tensor-not-produced": "map it from an ensemble input or from another step's output_map",
    "dtype-mismatch": "producer and consumer of an ensemble tensor must agree on data_type",
    "dims-mismatch": "dims exclude the batch dimension when max_batch_size > 0; -1 matches any size",
    "ensemble-output-not-produced": "map a step output to this name in that step's output_map",
    "ensemble-input-unused": "remove the input, or map it into a step",
    "cycle": "a step cannot consume, even indirectly, what it produces",
    "onnx-unreadable": "re-export the model (`make build`)",
    "onnx-mismatch": "the config's tensor names, types and dims must be the ONNX graph's (or re-export with `make build`)",
    "plan-metadata-unreadable": "rebuild the engine: its metadata file is damaged",
    "dali-outputs-mismatch": "one config output per pipeline output, in the pipeline's order",
    "instance-count-invalid": "count is the number of model instances, at least 1",
    "preferred-batch-invalid": "preferred sizes must lie in 1..max_batch_size",
    "warmup-on-ensemble": "Triton does not warm up ensembles: warm up their steps",
    "warmup-batch-invalid": "a warmup batch must fit the model's max_batch_size",
    "warmup-input-unknown": "warmup input keys are the model's input names",
    "warmup-dtype-mismatch": "the warmup data_type must be the input's",
    "warmup-dims-mismatch": "warmup dims are the input's dims (batch excluded) with every -1 made concrete",
    "warmup-file-missing": "warmup files live in <model>/warmup/",
    "parameter-invalid": "see the comment above the parameter in the committed config",
    "preprocess-output-invalid": "the pipeline decodes RGB and outputs CHW: dims [3, height, width]",
    "preprocess-signature": "the preprocessing model takes the encoded images and returns the pixels, nothing else",
    "bundle-shape": "the build serves one ensemble: encoded image in, scores out; an optional image check, a "
                    "preprocessing and a classifier step",
    "check-signature": "the image check takes the encoded images and hands them on, nothing else",
}
# What Triton knows by name (model_config.proto, and the backends NVIDIA ships in its images).
TRITON_PLATFORMS = ("ensemble", "onnxruntime_onnx", "pytorch_libtorch", "tensorflow_graphdef", "tensorflow_savedmodel",
                    "tensorrt_plan")
TRITON_BACKENDS = ("dali", "fil", "identity", "onnxruntime", "openvino", "python", "pytorch", "repeat", "square",
                   "tensorflow", "tensorrt", "tensorrtllm", "vllm")


def _edit_distance(a: str, b: str) -> int:
    """Single-character insertions, deletions, substitutions and swaps of neighbours that turn `a` into `b`."""
    rows = [list(range(len(b) + 1))] + [[i] + [0] * len(b) for i in range(1, len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            rows[i][j] = min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                rows[i][j] = min(rows[i][j], rows[i - 2][j - 2] + 1)
    return rows[-1][-1]


def _did_you_mean(name: str, known: tuple[str, ...]) -> str:
    """"did you mean ...?" for a known name a typo away (one edit for short names, two for longer), else ""."""
    distance, nearest = min((_edit_distance(name.lower(), candidate), candidate) for candidate in known)
    return f'did you mean "{nearest}"?' if distance <= (1 if len(nearest) <= 4 else 2) else ""


ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
              7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
              13: "TYPE_UINT64", 16: "TYPE_BF16"}


@dataclasses.dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    file: str
    line: int | None
    model: str | None
    field: str | None
    expected: str
    found: str
    hint: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        subject = ": ".join(part for part in (f'model "{self.model}"' if self.model else "", self.field or "") if part)
        text = f"{where}: {self.severity} [{self.code}] {subject}: expected {self.expected}, found {self.found}"
        return text + (f"\n    hint: {self.hint}" if self.hint else "")


@dataclasses.dataclass
class Report:
    repository: str
    flavor: str
    models: list[str]
    findings: list[Finding]
    seconds: float

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def ok(self, strict: bool = False) -> bool:
        return not self.errors and not (strict and self.warnings)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "errors": len(self.errors), "warnings": len(self.warnings)}, indent=2)

    def summary(self) -> str:
        return (f"{self.repository} ({self.flavor} flavor, {len(self.models)} models): {len(self.errors)} errors, "
                f"{len(self.warnings)} warnings, checked in {self.seconds:.2f}s")


@dataclasses.dataclass
class Model:
    """One parsed model: its config, the config's path and text (for line numbers)."""

    name: str
    path: Path
    text: str
    config: ModelConfig

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def kind(self) -> str:
        """The platform, or the platform a backend stands for ("tensorrt_plan", "python", ...)."""
        if self.config.platform:
            return self.config.platform
        return BACKEND_PLATFORM.get(self.config.backend, self.config.backend)

    def versions(self) -> list[Path]:
        """Version folders as Triton reads them: decimal names without leading zeros."""
        found = [p for p in self.directory.iterdir() if p.is_dir() and re.fullmatch(r"0|[1-9][0-9]*", p.name)]
        return sorted(found, key=lambda p: int(p.name))

    def served_versions(self) -> list[Path]:
        """The versions the version policy loads (default: the latest one)."""
        versions, policy = self.versions(), self.config.version_policy
        if policy.HasField("all"):
            return versions
        if policy.HasField("specific"):
            return [v for v in versions if int(v.name) in set(policy.specific.versions)]
        return versions[-(policy.latest.num_versions or 1):]

    def nth_line(self, section: str, pattern: str, index: int) -> int | None:
        """Line of the (index+1)-th match of `pattern` after `section` (entries of a repeated field)."""
        return self.line(section, *[pattern] * (index + 1))

    def line(self, *patterns: str) -> int | None:
        """Line of the last of `patterns`, each searched from where the previous one matched."""
        lines = self.text.splitlines()
        start, found = 0, None
        for pattern in patterns:
            regex = re.compile(pattern)
            for number in range(start, len(lines)):
                if regex.search(lines[number]):
                    start, found = number + 1, number + 1
                    break
            else:
                return found
        return found


class Checker:
    """Collects findings for one repository."""

    def __init__(self, root: Path, flavor: str | None, require_artifacts: bool, artifacts: bool, bundle_rules: bool):
        self.root = Path(root)
        self.require_artifacts = require_artifacts
        self.check_artifact_contents = artifacts
        self.bundle_rules = bundle_rules
        self.findings: list[Finding] = []
        self.models: dict[str, Model] = {}
        self.unparsable: set[str] = set()  # reported once, as parse errors
        self.requested_flavor = flavor
        self.flavor = flavor or COMMITTED_FLAVOR

    def add(self, severity: str, code: str, model: Model | str | None, field: str | None, expected, found, hint: str = "",
            line: int | None = None, file: Path | None = None) -> None:
        """Record a finding; `model` is a parsed Model, or just a name when the config did not parse."""
        path = file or (model.path if isinstance(model, Model) else self.root)
        name = model.name if isinstance(model, Model) else model
        self.findings.append(Finding(severity, code, str(path), line, name, field, str(expected), str(found),
                                     hint or HINTS.get(code, "")))

    # -- 1. syntax and schema ----------------------------------------------------------------
    def load(self) -> None:
        if not self.root.is_dir():
            self.add(ERROR, "repository-missing", None, None, "a model repository folder", "nothing at this path")
            return
        declared_flavors = set()
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not (folder / CONFIG_FILENAME).is_file():
                self.add(ERROR, "config-missing", folder.name, None, f"{folder / CONFIG_FILENAME}", "no such file",
                         "every model folder needs a config (the server runs with --disable-auto-complete-config)",
                         file=folder)
        for path in sorted(self.root.glob(f"*/{CONFIG_FILENAME}")):
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                self.add(ERROR, "parse-error", path.parent.name, None, "UTF-8 text",
                         f"undecodable bytes ({exc.reason} at byte {exc.start})", "save the file as UTF-8", file=path)
                self.unparsable.add(path.parent.name)
                continue
            marker = re.search(GENERATED_MARKER, text)
            if marker:
                declared_flavors.add(marker.group(1))
            try:
                config = text_format.Parse(text, ModelConfig())
            except text_format.ParseError as exc:
                line = exc.GetLine() if hasattr(exc, "GetLine") else None
                self.add(ERROR, "parse-error", path.parent.name, None, "a valid Triton ModelConfig (text format)", str(exc),
                         line=line, file=path)
                self.unparsable.add(path.parent.name)
                continue
            model = Model(path.parent.name, path, text, config)
            if config.name and config.name != model.name:
                self.add(ERROR, "name-mismatch", model, "name", f'"{model.name}" (the folder name)', f'"{config.name}"',
                         "Triton names a model after its folder: rename one of them", line=model.line(r"^\s*name\s*:"))
            self.models[model.name] = model
        if not self.models and not self.findings:
            self.add(ERROR, "repository-empty", None, None, f"model folders holding a {CONFIG_FILENAME}", "none")
        if self.requested_flavor is None and len(declared_flavors) == 1:
            self.flavor = declared_flavors.pop()

    # -- 2. layout -----------------------------------------------------------------------------
    def backend_names(self, model: Model) -> None:
        """Triton refuses a platform it does not know; a backend name a typo away from a known one is a typo."""
        config = model.config
        if config.platform and config.platform not in TRITON_PLATFORMS:
            self.add(ERROR, "unknown-platform", model, "platform", "one of " + ", ".join(TRITON_PLATFORMS),
                     f'"{config.platform}"',
                     _did_you_mean(config.platform, TRITON_PLATFORMS) or "Triton loads no model with another platform",
                     line=model.line(r"^\s*platform\s*:"))
        if config.backend and config.backend not in TRITON_BACKENDS:
            line = model.line(r"^\s*backend\s*:")
            suggestion = _did_you_mean(config.backend, TRITON_BACKENDS)
            if suggestion:
                self.add(ERROR, "backend-misspelled", model, "backend", "the name of an installed backend",
                         f'"{config.backend}"', suggestion, line=line)
            else:
                self.add(WARNING, "unknown-backend", model, "backend", "one of Triton's backends: " + ", ".join(TRITON_BACKENDS),
                         f'"{config.backend}"', "a custom backend? this validator cannot check its artifacts", line=line)

    def layout(self, model: Model) -> None:
        kind = model.kind
        if not kind:
            self.add(ERROR, "backend-missing", model, "platform/backend", "a platform or a backend", "neither",
                     'e.g. backend: "python", or platform: "tensorrt_plan"', line=1)
        versions = model.versions()
        if not versions:
            self.add(ERROR, "no-version-folder", model, None, "a numeric version folder, e.g. 1/", "none",
                     f"create {model.directory / VERSION}/ (Triton loads no version otherwise)")
        if kind in ARTIFACTS:
            names, producer = ARTIFACTS[kind], PRODUCERS[kind]
            if model.config.default_model_filename:
                names = (model.config.default_model_filename,)
            for version in model.served_versions():
                if not any((version / name).exists() for name in names):
                    severity = ERROR if self.require_artifacts else NOTE
                    self.add(severity, "missing-artifact", model, f"version {version.name}", " or ".join(names),
                             f"nothing in {version}", f"produced by {producer}")
        for output in model.config.output:
            if output.label_filename and not (model.directory / output.label_filename).is_file():
                self.add(ERROR, "missing-label-file", model, f"output[{output.name}].label_filename",
                         f"a file {model.directory / output.label_filename}", "no such file",
                         line=model.line(rf'name:\s*"{re.escape(output.name)}"', r"label_filename"))

    # -- 3. ensemble wiring --------------------------------------------------------------------
    @staticmethod
    def _full_shape(config: ModelConfig, dims) -> list[int]:
        return ([-1] if config.max_batch_size > 0 else []) + list(dims)

    @staticmethod
    def _dims_compatible(a: list[int], b: list[int]) -> bool:
        return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))

    @classmethod
    def _shape(cls, config: ModelConfig, tensor) -> tuple[list[int], list[int]]:
        """(dims, dims with the batch dimension) of a tensor as its model sees it (a reshape wins)."""
        dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        return dims, cls._full_shape(config, dims)

    @classmethod
    def _shapes_compatible(cls, a: tuple[list[int], list[int]], b: tuple[list[int], list[int]]) -> bool:
        # As Triton's ensemble check: the dims agree, or the dims with batch do (batching and non-batching models mix).
        return cls._dims_compatible(a[0], b[0]) or cls._dims_compatible(a[1], b[1])

    def ensemble(self, model: Model) -> None:
        config = model.config
        steps = list(config.ensemble_scheduling.step)
        if any(step.model_name in self.unparsable for step in steps):
            return  # its wiring cannot be checked until the step's config parses (already reported)
        if not steps:
            self.add(ERROR, "ensemble-no-steps", model, "ensemble_scheduling.step", "at least one step", "none")
            return
        # tensor name -> (data type, full shape, who) for everything an ensemble tensor can come from
        produced: dict[str, tuple[int, tuple[list[int], list[int]], str]] = {
            t.name: (t.data_type, self._shape(config, t), f'ensemble input "{t.name}"') for t in config.input
        }
        consumed: dict[str, list[str]] = {}
        edges: dict[int, set[int]] = {i: set() for i in range(len(steps))}
        producer_step: dict[str, int] = {}
        consumers: list[tuple[int, str, str, Model]] = []
        for index, step in enumerate(steps):
            target = self.models.get(step.model_name)
            field = f"ensemble_scheduling.step[{step.model_name}]"
            line = model.line(rf'model_name:\s*"{re.escape(step.model_name)}"')
            if target is None:
                self.add(ERROR, "step-model-missing", model, field, f'a model "{step.model_name}" in {self.root}',
                         "no such model folder", line=line)
                continue
            if step.model_version > 0 and not (target.directory / str(step.model_version)).is_dir():
                self.add(ERROR, "step-version-missing", model, f"{field}.model_version",
                         f"a folder {target.directory / str(step.model_version)}", "no such version",
                         "use model_version: -1 (the latest), or a version that exists", line=line)
            if target.config.max_batch_size > 0 and config.max_batch_size > target.config.max_batch_size:
                self.add(ERROR, "ensemble-batch-too-large", model, "max_batch_size",
                         f"<= {target.config.max_batch_size} (max_batch_size of step \"{target.name}\")",
                         config.max_batch_size, "Triton refuses an ensemble that can batch more than a step",
                         line=model.line(r"^\s*max_batch_size\s*:"))
            inputs = {t.name: t for t in target.config.input}
            outputs = {t.name: t for t in target.config.output}
            for kind, mapping, tensors in (("input", step.input_map, inputs), ("output", step.output_map, outputs)):
                for key in mapping:
                    if key not in tensors:
                        self.add(ERROR, "map-key-unknown", model, f"{field}.{kind}_map[{key}]",
                                 f'an {kind} of "{target.name}": {sorted(tensors)}', f'"{key}"',
                                 line=model.line(rf'model_name:\s*"{re.escape(step.model_name)}"', rf'key:\s*"{re.escape(key)}"'))
            for name, tensor in inputs.items():
                if name not in step.input_map and not tensor.optional:
                    self.add(ERROR, "input-not-mapped", model, f"{field}.input_map", f'an entry for input "{name}"',
                             "none", line=line)
            for key, value in step.output_map.items():
                if key not in outputs:
                    continue
                shape = self._shape(target.config, outputs[key])
                if value in producer_step or value in produced:
                    self.add(ERROR, "tensor-produced-twice", model, f"{field}.output_map[{key}]",
                             f'"{value}" produced once', "a second producer", line=line)
                produced[value] = (outputs[key].data_type, shape, f'output "{key}" of "{target.name}"')
                producer_step[value] = index
            for key, value in step.input_map.items():
                if key in inputs:
                    consumed.setdefault(value, []).append(target.name)
                    consumers.append((index, key, value, target))
        for index, key, value, target in consumers:
            field = f"ensemble_scheduling.step[{target.name}].input_map[{key}]"
            line = model.line(rf'model_name:\s*"{re.escape(target.name)}"', rf'value:\s*"{re.escape(value)}"')
            if value not in produced:
                self.add(ERROR, "tensor-not-produced", model, field, f'"{value}" to be an ensemble input or a step output',
                         "no producer", line=line)
                continue
            if value in producer_step:
                edges[producer_step[value]].add(index)
            dtype, shape, source = produced[value]
            tensor = next(t for t in target.config.input if t.name == key)
            want = self._shape(target.config, tensor)
            if tensor.data_type != dtype:
                self.add(ERROR, "dtype-mismatch", model, field,
                         f"{model_config_pb2.DataType.Name(tensor.data_type)} (input \"{key}\" of \"{target.name}\")",
                         f"{model_config_pb2.DataType.Name(dtype)} from {source}", line=line)
            elif not self._shapes_compatible(want, shape):
                self.add(ERROR, "dims-mismatch", model, field, f"{want[1]} (input \"{key}\" of \"{target.name}\", batch first)",
                         f"{shape[1]} from {source}", line=line)
        for tensor in config.output:
            field = f"output[{tensor.name}]"
            line = model.line(rf'name:\s*"{re.escape(tensor.name)}"')
            if tensor.name not in producer_step:
                self.add(ERROR, "ensemble-output-not-produced", model, field, "a step whose output_map produces it",
                         "no producer", line=line)
                continue
            dtype, shape, source = produced[tensor.name]
            want = self._shape(config, tensor)
            if dtype != tensor.data_type:
                self.add(ERROR, "dtype-mismatch", model, field, model_config_pb2.DataType.Name(tensor.data_type),
                         f"{model_config_pb2.DataType.Name(dtype)} from {source}", line=line)
            elif not self._shapes_compatible(want, shape):
                self.add(ERROR, "dims-mismatch", model, field, f"{want[1]} (batch first)", f"{shape[1]} from {source}", line=line)
        ensemble_outputs = {t.name for t in config.output}
        for tensor in config.input:
            if tensor.name not in consumed:
                self.add(WARNING, "ensemble-input-unused", model, f"input[{tensor.name}]", "a step that consumes it",
                         "none", line=model.line(rf'name:\s*"{re.escape(tensor.name)}"'))
        for name, index in producer_step.items():
            if name not in consumed and name not in ensemble_outputs:
                self.add(WARNING, "output-unused", model, f"ensemble_scheduling.step[{steps[index].model_name}].output_map",
                         f'"{name}" consumed by a step or returned', "computed and dropped",
                         "remove the mapping, or return it as an ensemble output")
        cycle = self._cycle(edges)
        if cycle:
            names = " -> ".join(steps[i].model_name for i in cycle)
            self.add(ERROR, "cycle", model, "ensemble_scheduling.step", "steps that form a DAG", f"the cycle {names}")

    @staticmethod
    def _cycle(edges: dict[int, set[int]]) -> list[int] | None:
        state: dict[int, int] = {}
        path: list[int] = []

        def visit(node: int) -> list[int] | None:
            state[node] = 1
            path.append(node)
            for nxt in sorted(edges[node]):
                if state.get(nxt) == 1:
                    return path[path.index(nxt):] + [nxt]
                if nxt not in state:
                    found = visit(nxt)
                    if found:
                        return found
            state[node] = 2
            path.pop()
            return None

        for node in edges:
            if node not in state:
                found = visit(node)
                if found:
                    return found
        return None

    # -- 4. artifacts against configs ----------------------------------------------------------
    def artifacts(self, model: Model) -> None:
        for version in model.versions():
            onnx_file = version / ONNX_MODEL
            if onnx_file.is_file() and model.kind in ("onnxruntime_onnx", "python"):
                self._onnx(model, onnx_file)
            if (version / TENSORRT_PLAN).is_file():
                self._plan_metadata(model, version / TENSORRT_PLAN)
            if (version / DALI_PIPELINE).is_file():
                if (version / DALI_SCRIPT).is_file():
                    self.add(WARNING, "dali-script-shadowed", model, f"version {version.name}",
                             f"{DALI_PIPELINE} or {DALI_SCRIPT}", "both",
                             f"the DALI backend loads {DALI_PIPELINE} and never runs {DALI_SCRIPT}: delete the stale one",
                             file=version / DALI_PIPELINE)
                self._dali(model, (version / DALI_PIPELINE).read_bytes(), version / DALI_PIPELINE)
            elif (version / DALI_SCRIPT).is_file() and model.kind == "dali":
                self._dali_script(model, version / DALI_SCRIPT)

    def _onnx(self, model: Model, path: Path) -> None:
        import onnx

        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as exc:
            self.add(ERROR, "onnx-unreadable", model, None, "a readable ONNX model", str(exc), file=path)
            return
        initializers = {i.name for i in graph.initializer}
        actual = {"input": {t.name: t for t in graph.input if t.name not in initializers},
                  "output": {t.name: t for t in graph.output}}
        for kind, tensors in (("input", model.config.input), ("output", model.config.output)):
            for tensor in tensors:
                field = f"{kind}[{tensor.name}]"
                line = model.line(rf'name:\s*"{re.escape(tensor.name)}"')
                found = actual[kind].get(tensor.name)
                if found is None:
                    self.add(ERROR, "onnx-mismatch", model, field, f'an ONNX {kind} "{tensor.name}"',
                             f"ONNX {kind}s {sorted(actual[kind])} in {path.name}", line=line)
                    continue
                onnx_type = ONNX_TYPES.get(found.type.tensor_type.elem_type, str(found.type.tensor_type.elem_type))
                if onnx_type != model_config_pb2.DataType.Name(tensor.data_type):
                    self.add(ERROR, "onnx-mismatch", model, f"{field}.data_type",
                             model_config_pb2.DataType.Name(tensor.data_type), f"{onnx_type} in {path.name}", line=line)
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in found.type.tensor_type.shape.dim]
                want = self._shape(model.config, tensor)[1]
                if not self._dims_compatible(want, dims):
                    self.add(ERROR, "onnx-mismatch", model, f"{field}.dims", f"{want} (batch first)", f"{dims} in {path.name}",
                             line=line)

    def _plan_metadata(self, model: Model, plan: Path) -> None:
        meta_path = plan_metadata.path_of(plan)
        if not meta_path.is_file():
            self.add(WARNING, "plan-metadata-missing", model, f"version {plan.parent.name}",
                     f"{meta_path.name} beside {plan.name}", "none",
                     "rebuild the engine with this project's engine build: it records the profile it was built with")
            return
        try:
            meta = plan_metadata.load(plan)
            profile, shapes = plan_metadata.profile(meta), plan_metadata.inputs(meta)
        except (OSError, ValueError) as exc:
            self.add(ERROR, "plan-metadata-unreadable", model, None, "engine metadata with a profile", str(exc), file=meta_path)
            return
        if profile.max < model.config.max_batch_size:
            self.add(ERROR, "plan-profile-too-small", model, "max_batch_size",
                     f"an optimization profile with max >= {model.config.max_batch_size}", f"max {profile.max}",
                     "rebuild the engine after changing max_batch_size", file=meta_path)
        for tensor in model.config.input:
            shape = shapes.get(tensor.name)
            dims = self._shape(model.config, tensor)[0]
            if shape is not None and list(shape) != dims:
                self.add(ERROR, "plan-shape-mismatch", model, f"input[{tensor.name}].dims", dims,
                         f"{shape} in the engine", "rebuild the engine", file=meta_path)

    def _dali_script(self, model: Model, script: Path) -> None:
        """Do with a dali.py what the DALI backend does when it loads the model, then inspect the pipeline."""
        from scripts import dali_runner

        try:
            serialized = dali_runner.autoserialize(script)
        except RuntimeError as exc:
            self.add(ERROR, "dali-script-fails", model, None, "a dali.py the DALI backend can serialize", str(exc),
                     "the server runs this file when it loads the model: regenerate it (`make build`, or "
                     "`python -m scripts gpu-files` for the gpu flavor)", file=script)
            return
        if serialized is not None:
            self._dali(model, serialized, shown=script)

    def _dali(self, model: Model, serialized: bytes, shown: Path) -> None:
        try:
            from nvidia.dali import Pipeline
        except ImportError:
            return
        errors = []
        # A CPU pipeline deserializes anywhere; a GPU (`mixed`) one needs a device.
        for device_id in (None, 0):
            try:
                pipeline = Pipeline.deserialize(serialized_pipeline=serialized, device_id=device_id)
                break
            except Exception as exc:
                errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        else:
            if any(word in " ".join(errors) for word in ("CUDA", "GPU", "libcuda")):
                self.add(NOTE, "dali-not-inspected", model, None, "a GPU to inspect this GPU pipeline", "no usable GPU here",
                         "the compose builder validates it on the GPU box", file=shown)
            else:
                self.add(ERROR, "dali-unreadable", model, None, "a serialized DALI pipeline", errors[0],
                         "serialize with the DALI of the server (`make build`, or the compose builder)", file=shown)
            return
        # What a pipeline exposes differs between DALI releases (the server's may be older than this one):
        # a property this DALI lacks leaves its check undone, said as a note.
        facts = {}
        for name in ("max_batch_size", "num_outputs"):
            try:
                facts[name] = getattr(pipeline, name)
            except Exception as exc:
                self.add(NOTE, "dali-not-inspected", model, None, f"Pipeline.{name} to check the config against",
                         f"{type(exc).__name__} in this DALI", "the server checks it when it loads the model", file=shown)
        if "max_batch_size" in facts and facts["max_batch_size"] != model.config.max_batch_size:
            self.add(WARNING, "dali-batch-mismatch", model, "max_batch_size",
                     f"{model.config.max_batch_size} (the pipeline's batch size)", facts["max_batch_size"],
                     f"rebuild {shown.name} after changing max_batch_size", file=shown)
        if "num_outputs" in facts and facts["num_outputs"] != len(model.config.output):
            self.add(ERROR, "dali-outputs-mismatch", model, "output", f"{facts['num_outputs']} outputs (as the pipeline)",
                     len(model.config.output), file=shown)

    # -- 5. labels -----------------------------------------------------------------------------
    def labels(self, model: Model) -> None:
        for output in model.config.output:
            path = model.directory / output.label_filename if output.label_filename else None
            if path is None or not path.is_file():
                continue
            field = f"output[{output.name}].label_filename"
            text = path.read_bytes().decode("utf-8", errors="replace")
            for number, problem in label_problems(text):
                self.add(ERROR, "labels-format", model, field, "one label per line", f"line {number} {problem}",
                         "Triton serves every line as a label, as it is", file=path)
            count = len(text.split("\n")) - (1 if text.endswith("\n") else 0) if text else 0
            if any(d < 0 for d in output.dims):
                continue  # a variable class count cannot be checked against the file
            classes = 1
            for d in output.dims:
                classes *= d
            if count != classes:
                self.add(ERROR, "labels-count-mismatch", model, f"output[{output.name}].dims",
                         f"{count} classes (the lines of {output.label_filename})", f"dims {list(output.dims)}",
                         "one label per class, in output order",
                         line=model.line(rf'name:\s*"{re.escape(output.name)}"', r"\bdims\b"))

    # -- 6. batching and instances -------------------------------------------------------------
    def batching(self, model: Model) -> None:
        config = model.config
        if config.HasField("dynamic_batching"):
            batching = config.dynamic_batching
            if config.max_batch_size <= 0:
                self.add(WARNING, "batching-without-batch", model, "dynamic_batching", "max_batch_size > 0",
                         config.max_batch_size, "dynamic batching has no effect on a model that does not batch",
                         line=model.line(r"dynamic_batching"))
            for size in batching.preferred_batch_size:
                if size < 1 or size > config.max_batch_size:
                    self.add(ERROR, "preferred-batch-invalid", model, "dynamic_batching.preferred_batch_size",
                             f"sizes in 1..{config.max_batch_size} (max_batch_size)", size,
                             line=model.line(r"preferred_batch_size"))
            if batching.max_queue_delay_microseconds > MAX_SANE_QUEUE_DELAY_US:
                self.add(WARNING, "queue-delay-high", model, "dynamic_batching.max_queue_delay_microseconds",
                         f"<= {MAX_SANE_QUEUE_DELAY_US} (100 ms)", batching.max_queue_delay_microseconds,
                         "every request may wait this long for a batch to fill", line=model.line(r"max_queue_delay_microseconds"))
        for index, group in enumerate(config.instance_group):
            field = f"instance_group[{index}]"
            if group.count < 0:
                self.add(ERROR, "instance-count-invalid", model, f"{field}.count", ">= 1", group.count,
                         line=model.nth_line(r"instance_group", r"\bcount\s*:", index))
            if group.kind == group.KIND_GPU and self.flavor in CPU_ONLY_FLAVORS:
                self.add(ERROR, "gpu-instance-in-cpu-flavor", model, f"{field}.kind", "KIND_CPU", "KIND_GPU",
                         f"the {self.flavor} flavor has no GPU: regenerate it with `make build`",
                         line=model.nth_line(r"instance_group", r"\bkind\s*:", index))
            if group.kind == group.KIND_CPU and model.kind == "tensorrt_plan":
                self.add(ERROR, "cpu-instance-for-tensorrt", model, f"{field}.kind", "KIND_GPU", "KIND_CPU",
                         "TensorRT engines run only on a GPU", line=model.nth_line(r"instance_group", r"\bkind\s*:", index))

    # -- 7. warmup -----------------------------------------------------------------------------
    def warmup(self, model: Model) -> None:
        config = model.config
        if config.model_warmup and model.kind == "ensemble":
            self.add(ERROR, "warmup-on-ensemble", model, "model_warmup",
                     "no warmup (ensembles are warmed up through their steps)", f"{len(config.model_warmup)} warmup entries",
                     line=model.line(r"model_warmup"))
            return
        inputs = {t.name: t for t in config.input}
        for warmup in config.model_warmup:
            name_line = model.line(rf'name:\s*"{re.escape(warmup.name)}"') if warmup.name else model.line(r"model_warmup")
            if config.max_batch_size > 0 and not 1 <= warmup.batch_size <= config.max_batch_size:
                self.add(ERROR, "warmup-batch-invalid", model, f"model_warmup[{warmup.name}].batch_size",
                         f"1..{config.max_batch_size}", warmup.batch_size, line=name_line)
            for key, data in warmup.inputs.items():
                field = f"model_warmup[{warmup.name}].inputs[{key}]"
                tensor = inputs.get(key)
                if tensor is None:
                    self.add(ERROR, "warmup-input-unknown", model, field, f"one of the inputs {sorted(inputs)}", f'"{key}"',
                             line=name_line)
                    continue
                if data.data_type != tensor.data_type:
                    self.add(ERROR, "warmup-dtype-mismatch", model, f"{field}.data_type",
                             model_config_pb2.DataType.Name(tensor.data_type), model_config_pb2.DataType.Name(data.data_type),
                             line=name_line)
                if not self._dims_compatible(list(tensor.dims), list(data.dims)) or any(d < 0 for d in data.dims):
                    self.add(ERROR, "warmup-dims-mismatch", model, f"{field}.dims",
                             f"{list(tensor.dims)} with every -1 made concrete", list(data.dims), line=name_line)
                    continue
                if data.input_data_file:
                    self._warmup_file(model, field, data, name_line)

    def _warmup_file(self, model: Model, field: str, data, line: int | None) -> None:
        sample = model.directory / WARMUP_DIR / data.input_data_file
        if not sample.is_file():
            self.add(ERROR, "warmup-file-missing", model, f"{field}.input_data_file", f"a file {sample}", "no such file",
                     line=line)
            return
        type_name = model_config_pb2.DataType.Name(data.data_type)
        if type_name not in BYTES_PER_ELEMENT:
            return
        expected = BYTES_PER_ELEMENT[type_name]
        for d in data.dims:
            expected *= d
        if sample.stat().st_size != expected:
            self.add(ERROR, "warmup-file-size", model, f"{field}.dims", f"{expected} bytes (what dims {list(data.dims)} declare)",
                     f"{sample.stat().st_size} bytes in {sample.name}", "Triton reads the file as a raw tensor: set dims to "
                     "match the file (for encoded images, dims: [ <file size> ])", line=line)

    # -- this bundle's own rules ----------------------------------------------------------------
    def bundle(self) -> None:
        """What the build's reader (`config.load_bundle`) needs beyond Triton, so that a repository that
        validates is one the build accepts: the preprocessing rules, on the model the ensemble's
        wiring makes the preprocessing (as the reader finds it), with their lines; then, when nothing
        else is wrong, whatever else the reader refuses."""
        for ensemble in (m for m in self.models.values() if m.kind == "ensemble" and len(m.config.input) == 1):
            steps = bundle_steps(ensemble.config)
            for step, rules in ((steps.check, image_check_problems), (steps.preprocess, preprocess_problems)):
                model = self.models.get(step.model_name) if step is not None else None
                for problem in rules(model.config) if model is not None else ():
                    key = re.fullmatch(r"parameters\[(\w+)\]", problem.field)
                    line = model.line(rf'key:\s*"{key.group(1)}"') if key else model.line(r"^\s*output", r"\bdims\b")
                    self.add(ERROR, problem.code, model, problem.field, problem.expected, problem.found, problem.hint,
                             line=line)
        if self.models and not any(f.severity == ERROR for f in self.findings):
            try:
                load_bundle(self.root)
            except ConfigError as exc:
                self.add(ERROR, "bundle-shape", exc.path.parent.name if exc.path.name == CONFIG_FILENAME else None,
                         exc.field, "what the build reads: one ensemble of [an image check,] a preprocessing and a "
                         "classifier step",
                         str(exc).removeprefix(f"{exc.path}: "), file=exc.path)

    def run(self) -> None:
        self.load()
        for model in self.models.values():
            self.backend_names(model)
            self.layout(model)
            if model.kind == "ensemble":
                self.ensemble(model)
            if self.check_artifact_contents:
                self.artifacts(model)
            self.labels(model)
            self.batching(model)
            self.warmup(model)
        if self.bundle_rules:
            self.bundle()


def validate(root: Path, flavor: str | None = None, require_artifacts: bool = False, artifacts: bool = True,
             bundle_rules: bool = True) -> Report:
    """Check every model in `root`. `flavor` defaults to what generated configs declare, else gpu.

    bundle_rules=False checks only what Triton itself requires (a repository that is not this bundle's).
    """
    started = time.perf_counter()
    checker = Checker(root, flavor, require_artifacts, artifacts, bundle_rules)
    checker.run()
    order = {ERROR: 0, WARNING: 1, NOTE: 2}
    findings = sorted(checker.findings, key=lambda f: (order[f.severity], f.file, f.line or 0))
    return Report(str(root), checker.flavor, sorted(checker.models), findings, time.perf_counter() - started)


def checked_bundle(root: Path) -> Bundle:
    """The bundle of `root`, once the validator finds no error in its configs (artifacts aside).

    The build and the CLI start here, so that a broken repository is refused with every mistake
    listed at once (file, line, hint), not only the first one the reader trips on.
    """
    report = validate(root, artifacts=False)
    if report.errors:
        details = "\n".join(str(f) for f in report.errors)
        raise ConfigError(report.errors[0].file, f"{len(report.errors)} error(s) in the model repository:\n{details}")
    return load_bundle(root)


def check_edits(root: Path, texts: dict[Path, str]) -> None:
    """Whether `root` with `texts` ({file: new text}) written over its files passes what `checked_bundle`
    checks, tried on a copy (nothing of `root` changes). ConfigError names `root`'s files."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edits-") as scratch:
        copy = Path(scratch) / root.name
        # The version folders hold artifacts only (an engine can be large): the configs are what changes.
        shutil.copytree(root, copy, ignore=lambda folder, names: names if Path(folder).name.isdigit() else [])
        for path, text in texts.items():
            (copy / path.relative_to(root)).write_text(text)
        try:
            checked_bundle(copy)
        except ConfigError as exc:
            where = root / exc.path.relative_to(copy) if exc.path.is_relative_to(copy) else exc.path
            raise ConfigError(where, str(exc).removeprefix(f"{exc.path}: ").replace(str(copy), str(root))) from None


def format_report(report: Report, notes: bool = True) -> Iterable[str]:
    for finding in report.findings:
        if notes or finding.severity != NOTE:
            yield str(finding)
    yield report.summary()


@dataclasses.dataclass(frozen=True)
class Difference:
    model: str
    field: str
    committed: str
    live: str

    def __str__(self) -> str:
        return f'model "{self.model}": {self.field}: committed {self.committed}, live {self.live}'


def _repeated(descriptor) -> bool:
    # protobuf 5+ names it is_repeated; `label` is deprecated there.
    return descriptor.is_repeated if hasattr(descriptor, "is_repeated") else descriptor.label == descriptor.LABEL_REPEATED


def _render(descriptor, value) -> str:
    if hasattr(value, "ListFields"):
        return text_format.MessageToString(value, as_one_line=True)
    if descriptor.enum_type is not None and isinstance(value, int):
        return descriptor.enum_type.values_by_number[value].name
    if _repeated(descriptor):
        return str([_render_scalar(descriptor, v) for v in value])
    return repr(value)


def _render_scalar(descriptor, value) -> str:
    return descriptor.enum_type.values_by_number[value].name if descriptor.enum_type is not None else value


def _differences(model: str, committed, live, prefix: str = "") -> Iterator[Difference]:
    """Fields set in `committed` whose live value differs (fields only the server set are its defaults)."""
    for descriptor, value in committed.ListFields():
        field = f"{prefix}{descriptor.name}"
        live_value = getattr(live, descriptor.name)
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            value_field = descriptor.message_type.fields_by_name["value"]
            for key in sorted(set(value) | set(live_value)):
                mine = _render(value_field, value[key]) if key in value else "absent"
                theirs = _render(value_field, live_value[key]) if key in live_value else "absent"
                if mine != theirs:
                    yield Difference(model, f"{field}[{key}]", mine, theirs)
        elif descriptor.message_type is not None and _repeated(descriptor):
            if len(value) != len(live_value):
                yield Difference(model, field, f"{len(value)} entries", f"{len(live_value)} entries")
                continue
            for index, (mine, theirs) in enumerate(zip(value, live_value, strict=True)):
                yield from _differences(model, mine, theirs, prefix=f"{field}[{index}].")
        elif descriptor.message_type is not None:
            yield from _differences(model, value, live_value, prefix=f"{field}.")
        elif value != live_value:
            yield Difference(model, field, _render(descriptor, value), _render(descriptor, live_value))


def diff_live(root: Path, url: str, headers: dict[str, str] | None = None) -> list[Difference]:
    """How each committed config in `root` differs from what the server at `url` (HTTP) reports."""
    import tritonclient.http as httpclient
    from google.protobuf import json_format
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url)
    differences = []
    try:
        for path in sorted(Path(root).glob(f"*/{CONFIG_FILENAME}")):
            name = path.parent.name
            committed = read_config(path)
            try:
                live_json = client.get_model_config(name, headers=headers)
            except InferenceServerException as exc:
                if exc.status() in ("401", "403"):
                    raise PermissionError(f"{url}: {exc.message()} (pass --admin-key or set {ADMIN_KEY_ENV})") from exc
                differences.append(Difference(name, "(model)", "present", f"not served: {exc.message()}"))
                continue
            live = json_format.ParseDict(live_json, ModelConfig(), ignore_unknown_fields=True)
            differences.extend(_differences(name, committed, live))
    finally:
        client.close()
    return differences
