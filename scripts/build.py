"""Build: the committed model repository and a model in, artifacts and the generated flavors out.

The stages are declared once, in `STAGES` at the end of this module: each names what it reads (a
digest of files, config facts and the code that builds it, kept in a stamp), what it writes, and how.
A stage whose inputs and outputs match its stamp is skipped. Numbering, `--help`, `--json` and the
tests are derived from that list. Outputs live under the build folder (git-ignored, see
`scripts.layout`); the committed configs are read, never written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scripts import backends, config, corpus, demo, export, intake, preprocess, repository, tritonserver
from scripts import validate as validate_module
from scripts.config import Bundle, ConfigError
from scripts.constants import DEMO_MODEL, GENERATED_FLAVORS
from scripts.layout import Layout
from scripts.validate import checked_bundle, validate

# The parity check's images, whatever the labels: rendered demo JPEGs, the warmup images, and the
# odd-but-valid kinds made from them (corpus.good: grayscale, CMYK, alpha, EXIF, BMP, very large, tiny).
VERIFY_RENDERED = 48
ALL_HELDOUT = demo.HELDOUT_PER_CLASS * len(demo.SHAPES)  # the TensorRT accuracy gate takes every held-out image
VERIFY_KIND_SOURCES = 3  # photos each odd kind is made from
VERIFY_MIN_IMAGES = 64
ADOPTED_RECORD = "adopted.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: Path, skip_versions: bool = False) -> str:
    """Digest of every file below `path` (names and contents), optionally outside version folders."""
    digest = hashlib.sha256()
    files = [p for p in Path(path).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    if skip_versions:
        files = [p for p in files if not any(part.isdigit() for part in p.relative_to(path).parts[:-1])]
    for item in sorted(files):
        digest.update(str(item.relative_to(path)).encode())
        digest.update(sha256_file(item).encode())
    return digest.hexdigest()


def outputs_digest(paths: list[Path]) -> list[str | None]:
    """Digest of each output (file or folder); None for a missing one."""
    return [None if not p.exists() else sha256_tree(p) if p.is_dir() else sha256_file(p) for p in paths]


def replace_path(staging: Path, target: Path) -> None:
    """Move a finished output into place (a folder is replaced whole)."""
    if target.is_dir():
        shutil.rmtree(target)
    staging.replace(target)


def package_versions(*names: str) -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in names}


def source_digest(*modules) -> str:
    return hashlib.sha256("".join(inspect.getsource(m) for m in modules).encode()).hexdigest()


def recorded_model(layout: Layout) -> str | None:
    """The model the last build of `layout` exported ("demo" or a file's path), from its onnx stamp."""
    try:
        return json.loads((layout.stamps / "onnx.json").read_text())["inputs"]["source"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """What the build exports: the demo, or a user's model file and the folders its code lives in."""

    model: str = DEMO_MODEL
    code: tuple[str, ...] = ()


def adopted_record(layout: Layout) -> Path:
    """Where `adopt` records the model it adopted: beside the build outputs, kept by `make clean`."""
    return layout.build_dir / ADOPTED_RECORD


def record_adopted(layout: Layout, choice: ModelChoice) -> Path:
    """Paths inside the project are kept relative to it: the builder container sees the project elsewhere."""
    project = layout.project

    def portable(path: str) -> str:
        resolved = Path(path).resolve()
        return str(resolved.relative_to(project)) if resolved.is_relative_to(project) else str(resolved)

    record = adopted_record(layout)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"model": portable(choice.model), "code": [portable(c) for c in choice.code]}, indent=2))
    return record


def model_choice(layout: Layout, model: str | None = None, code: tuple[str, ...] = ()) -> ModelChoice:
    """The model given, else the adopted one (`python -m scripts adopt`), else the demo."""
    if model:
        return ModelChoice(model, tuple(code))
    try:
        record = json.loads(adopted_record(layout).read_text())
    except (OSError, ValueError):
        return ModelChoice(DEMO_MODEL, tuple(code))
    return ModelChoice(str(layout.project / record["model"]),
                       tuple(code) or tuple(str(layout.project / c) for c in record.get("code", ())))


class BuildError(RuntimeError):
    """A build output failed its checks."""


@dataclasses.dataclass(frozen=True)
class Skip:
    """Why a stage does not run this time, and how its result reads."""

    message: str
    status: str = "skipped"
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    clear_outputs: bool = False  # remove what an earlier run of the stage left: it no longer applies


@dataclasses.dataclass(frozen=True)
class Stage:
    """One build stage. Each callable takes the Builder; `run` returns the stage's report."""

    name: str
    does: str  # one line, for --help
    inputs: Callable[[Builder], dict[str, Any]]  # everything the output depends on (digested into the stamp)
    outputs: Callable[[Builder], list[Path]]
    run: Callable[[Builder], dict[str, Any]]
    skip: Callable[[Builder], Skip | None] = lambda builder: None  # decides only: no side effects
    on_request: bool = False  # runs only when named (`build --only NAME` or `--with NAME`)


@dataclasses.dataclass
class StageResult:
    name: str
    status: str  # "built", "up to date", or a Skip's status
    seconds: float
    report: dict[str, Any]


class Builder:
    """Runs STAGES in order, after the validator found no error in the committed repository."""

    def __init__(self, layout: Layout, model: str = DEMO_MODEL, force: bool = False, progress: Callable[[str], None] = print,
                 code: tuple[str, ...] = ()):
        self.layout = layout
        self.model = model
        self.code = tuple(Path(folder) for folder in code)  # where a pickled model's classes are defined
        self.force = force
        self.progress = progress
        self.bundle: Bundle = checked_bundle(layout.repository)
        self.flavors: tuple[str, ...] = GENERATED_FLAVORS
        self.requested: set[str] = set()
        self.results: list[StageResult] = []

    def run(self, flavors: tuple[str, ...] = GENERATED_FLAVORS, only: tuple[str, ...] | None = None,
            also: tuple[str, ...] = ()) -> list[StageResult]:
        """Run the stages in order: all but the on-request ones, plus those named in `also`; or just
        those named in `only` (for a stage whose inputs earlier runs built)."""
        self.flavors = flavors
        self.requested = set(only or ()) | set(also)
        unknown = self.requested - {stage.name for stage in STAGES}
        if unknown:
            raise ValueError(f"no build stage named {sorted(unknown)}; the stages are {[stage.name for stage in STAGES]}")
        for number, stage in enumerate(STAGES, start=1):
            if only is None or stage.name in only:
                self._stage(f"[{number}/{len(STAGES)}] {stage.name}", stage)
        return self.results

    # -- the stamp mechanism ------------------------------------------------------------------
    def _recorded(self, stamp: Path) -> dict[str, Any]:
        try:
            return json.loads(stamp.read_text())
        except (OSError, ValueError):
            return {}  # missing or unreadable: the stage runs again

    def _stage(self, title: str, stage: Stage) -> None:
        """Run `stage` unless its stamp says these inputs already made these (unchanged) outputs."""
        skip = stage.skip(self)
        if skip is None and stage.on_request and stage.name not in self.requested:
            skip = Skip(f"skipped (on request only: `build --only {stage.name}` or `--with {stage.name}`)")
        if skip is not None:
            if skip.clear_outputs:
                for path in stage.outputs(self):
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
                (self.layout.stamps / f"{stage.name}.json").unlink(missing_ok=True)
            self.progress(f"{title}: {skip.message}")
            self.results.append(StageResult(stage.name, skip.status, 0.0, skip.report))
            return
        stamp = self.layout.stamps / f"{stage.name}.json"
        inputs, outputs = stage.inputs(self), stage.outputs(self)
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        recorded = self._recorded(stamp)
        if not self.force and recorded.get("digest") == digest and recorded.get("outputs") == outputs_digest(outputs):
            self.progress(f"{title}: up to date")
            self.results.append(StageResult(stage.name, "up to date", 0.0, recorded.get("report", {})))
            return
        self.progress(f"{title}: building")
        # A stage that fails must not leave a stamp that vouches for older outputs.
        stamp.unlink(missing_ok=True)
        started = time.monotonic()
        report = stage.run(self)
        seconds = time.monotonic() - started
        stamp.parent.mkdir(parents=True, exist_ok=True)
        record = {"digest": digest, "outputs": outputs_digest(outputs), "inputs": inputs, "report": report}
        staging = stamp.with_suffix(".tmp")
        staging.write_text(json.dumps(record, indent=2, default=str))
        staging.replace(stamp)
        self.progress(f"{title}: built in {seconds:.1f}s" + (f" ({report['summary']})" if "summary" in report else ""))
        self.results.append(StageResult(stage.name, "built", seconds, report))

    # -- what the stages share -----------------------------------------------------------------
    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.classifier.labels

    @property
    def demo(self) -> bool:
        return self.model == DEMO_MODEL

    def verification_images(self, rendered: int = VERIFY_RENDERED) -> list[corpus.Sample]:
        """Real encoded images of many kinds for the parity checks, whatever the labels: `rendered` demo
        JPEGs (the held-out ones, in memory), the warmup images, and the odd-but-valid kinds made from them."""
        jpegs = [jpeg for _, jpeg in demo.heldout_samples(rendered)]
        warmup = [path.read_bytes() for path in self.bundle.warmup_images]
        samples = [corpus.Sample("rendered-jpeg", jpeg) for jpeg in jpegs] + [corpus.Sample("warmup", w) for w in warmup]
        samples += corpus.good((warmup + jpegs)[:VERIFY_KIND_SOURCES])
        if len(samples) < VERIFY_MIN_IMAGES:
            raise BuildError(f"only {len(samples)} images to verify the model on; the check needs {VERIFY_MIN_IMAGES}")
        return samples

    def verification_inputs(self, rendered: int = VERIFY_RENDERED) -> np.ndarray:
        """The verification images, preprocessed as the preprocessing config says: [N, 3, H, W]."""
        spec = self.bundle.preprocess
        return np.stack([preprocess.reference(sample.data, spec) for sample in self.verification_images(rendered)])

    # -- heldout -------------------------------------------------------------------------------
    def heldout_skip(self) -> Skip | None:
        if all(label in demo.SHAPES for label in self.labels):
            return None
        # Images of other labels would mislead the checks that read them.
        return Skip("skipped (the labels are not demo shapes)", clear_outputs=True)

    def heldout_inputs(self) -> dict[str, Any]:
        return {"labels": self.labels, "code": source_digest(demo)}

    def heldout_run(self) -> dict[str, Any]:
        staging = self.layout.heldout.with_name("heldout.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        count = demo.write_heldout(self.labels, staging)
        replace_path(staging, self.layout.heldout)
        return {"images": count, "summary": f"{count} JPEGs in {self.layout.heldout}"}

    # -- model ---------------------------------------------------------------------------------
    def model_skip(self) -> Skip | None:
        if self.demo:
            return None
        source = self.model_source()
        return Skip(f"{self.model} (sha256 {source['sha256'][:12]})", "user model", {"path": source["model"]})

    def model_source(self) -> dict[str, Any]:
        """What the model is made from: the demo's recipe, or the user's file."""
        if self.demo:
            try:
                demo.check_labels(self.labels)
            except ValueError as exc:
                raise ConfigError(self.bundle.label_path(self.bundle.classifier_config), str(exc)) from None
            return {
                "model": DEMO_MODEL,
                "labels": self.labels,
                # Trained on preprocessed images: only what changes the pixels retrains it.
                "preprocess": {field: getattr(self.bundle.preprocess, field) for field in preprocess.COMPUTED_FROM},
                "code": source_digest(demo, preprocess),
            }
        path = Path(self.model)
        if not path.is_file():
            raise intake.IntakeError(f"{path}: model file not found")
        source = {"model": str(path.resolve()), "sha256": sha256_file(path)}
        if self.code:  # the code of a pickled model's classes makes the model as much as its weights do
            source["code"] = {str(path.resolve()): sha256_file(path) for path in intake.code_files(self.code)}
        return source

    def model_run(self) -> dict[str, Any]:
        import torch

        model = demo.train(self.labels, self.bundle.preprocess, progress=lambda m: self.progress(f"      {m}"))
        self.layout.artifacts.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), self.layout.demo_weights)
        return {"summary": f"weights in {self.layout.demo_weights}"}

    def _load_model(self):
        """(kind, torch module to export); the module is None for a user's ONNX file."""
        if self.demo:
            import torch

            module = demo.make_model(len(self.labels))
            module.load_state_dict(torch.load(self.layout.demo_weights, map_location="cpu"))
            return DEMO_MODEL, module.eval()
        loaded = intake.load(Path(self.model), self.code)
        return loaded.kind, loaded.module

    # -- onnx ----------------------------------------------------------------------------------
    def onnx_inputs(self) -> dict[str, Any]:
        source = self.model_source()
        if self.demo:
            source["weights"] = sha256_file(self.layout.demo_weights)
        return {
            "source": source,
            "classifier": dataclasses.asdict(self.bundle.classifier),
            "code": source_digest(export, intake),
            "versions": package_versions("torch", "onnx", "onnxruntime"),
        }

    def onnx_run(self) -> dict[str, Any]:
        self.layout.artifacts.mkdir(parents=True, exist_ok=True)
        kind, module = self._load_model()
        # Verified before it takes the place of the last good export.
        staging = self.layout.onnx.with_suffix(".tmp.onnx")
        if module is None:
            export.adopt_onnx(Path(self.model), self.bundle.classifier, staging)
        else:
            export.export(module, self.bundle.classifier, staging)
        report = export.verify(staging, self.bundle.classifier, self.verification_inputs(), module)
        replace_path(staging, self.layout.onnx)
        return {
            "kind": kind,
            "max_abs_error": report.max_abs_error,
            "tolerance": report.tolerance,
            "samples": report.samples,
            "summary": str(report),
        }

    # -- dali ----------------------------------------------------------------------------------
    def dali_inputs(self) -> dict[str, Any]:
        import nvidia.dali

        return {
            "preprocess": dataclasses.asdict(self.bundle.preprocess),
            "dali": nvidia.dali.__version__,
            "code": source_digest(preprocess),
        }

    def dali_run(self) -> dict[str, Any]:
        import nvidia.dali

        self.layout.artifacts.mkdir(parents=True, exist_ok=True)
        self.layout.dali_cpu.write_bytes(preprocess.serialize_cpu_pipeline(self.bundle.preprocess))
        return {"summary": f"{self.layout.dali_cpu.stat().st_size} bytes, DALI {nvidia.dali.__version__}"}

    # -- flavors -------------------------------------------------------------------------------
    def flavors_inputs(self) -> dict[str, Any]:
        return {
            "flavors": self.flavors,
            "configs": sha256_tree(self.layout.repository, skip_versions=True),
            "onnx": sha256_file(self.layout.onnx),
            "dali": sha256_file(self.layout.dali_cpu),
            "python_models": {path.name: sha256_file(path) for path in repository.python_model_sources()},
            "code": source_digest(repository, config, validate_module),
        }

    def flavors_outputs(self) -> list[Path]:
        return [self.layout.flavor(name) for name in self.flavors]

    def flavors_run(self) -> dict[str, Any]:
        artifacts = repository.Artifacts(onnx=self.layout.onnx, dali_cpu=self.layout.dali_cpu)
        for name in self.flavors:
            target = repository.generate(self.bundle, name, self.layout.flavor(name), artifacts)
            report = validate(target, flavor=name, require_artifacts=True)
            if not report.ok():
                shutil.rmtree(target)
                details = "\n".join(str(f) for f in report.errors)
                raise BuildError(f"the generated {name} repository does not validate:\n{details}")
        return {"summary": "validated " + ", ".join(str(self.layout.flavor(n)) for n in self.flavors)}

    # -- backends ------------------------------------------------------------------------------
    def backends_inputs(self) -> dict[str, Any]:
        return {
            "versions": backends.toolchain().versions(),
            "pinned_for": backends.PINNED_FOR,
            "sources": backends.pinned_sources(),
            "patches": sha256_tree(backends.PATCHES),
            "cmake": sha256_file(backends.CUDA_RUNTIME_CMAKE),
            "code": source_digest(backends, tritonserver),
        }

    def backends_outputs(self) -> list[Path]:
        return [self.layout.backends / name for name in backends.BACKENDS]

    def backends_run(self) -> dict[str, Any]:
        return backends.build(self.layout.backends, self.layout.backends_work, progress=self.progress)


STAGES = (
    Stage("heldout", "render the demo's held-out JPEGs (real inputs for checks and tests)",
          Builder.heldout_inputs, lambda b: [b.layout.heldout], Builder.heldout_run, Builder.heldout_skip),
    Stage("model", "train the demo model, or take the user's ONNX / TorchScript / pickled model",
          Builder.model_source, lambda b: [b.layout.demo_weights], Builder.model_run, Builder.model_skip),
    Stage("onnx", "export to ONNX with a dynamic batch; verify with onnx.checker and ONNX Runtime vs torch",
          Builder.onnx_inputs, lambda b: [b.layout.onnx], Builder.onnx_run),
    Stage("dali", "serialize the CPU preprocessing pipeline (model.dali of the local flavor)",
          Builder.dali_inputs, lambda b: [b.layout.dali_cpu], Builder.dali_run),
    Stage("flavors", "generate the cpu and local repositories from the committed configs, and validate them",
          Builder.flavors_inputs, Builder.flavors_outputs, Builder.flavors_run),
    Stage("backends", "compile Triton's DALI and ONNX Runtime backends for the local tritonserver (cpu flavor)",
          Builder.backends_inputs, Builder.backends_outputs, Builder.backends_run, on_request=True),
)
