"""Build: the committed model repository and a model in, artifacts and the generated flavors out.

Stages, each skipped when its inputs (files, config facts, the code that builds it) are unchanged:

1. heldout   render the demo's held-out JPEGs (real inputs for checks and tests)
2. model     train the demo model, or take the user's ONNX / TorchScript / pickled model
3. onnx      export to ONNX with a dynamic batch; verify with onnx.checker and ONNX Runtime vs torch
4. dali      serialize the CPU preprocessing pipeline (`model.dali`)
5. flavors   generate the `cpu` and `local` repositories from the committed configs

Outputs live under the build folder (git-ignored): `artifacts/`, `demo/heldout/`, `repos/<flavor>/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scripts import config, demo, export, intake, preprocess, repository
from scripts import validate as validate_module
from scripts.config import Bundle, ConfigError, load_bundle
from scripts.validate import validate

DEMO = "demo"
VERIFY_SAMPLES = 64
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


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


class BuildError(RuntimeError):
    """A build output failed its checks."""


@dataclasses.dataclass
class Layout:
    """Where the build reads and writes."""

    repository: Path
    build_dir: Path

    @property
    def artifacts(self) -> Path:
        return self.build_dir / "artifacts"

    @property
    def heldout(self) -> Path:
        return self.build_dir / "demo" / "heldout"

    @property
    def backends(self) -> Path:
        return self.build_dir / "backends"

    @property
    def stamps(self) -> Path:
        return self.build_dir / "stamps"

    @property
    def onnx(self) -> Path:
        return self.artifacts / "model.onnx"

    @property
    def demo_weights(self) -> Path:
        return self.artifacts / "demo_model.pt"

    @property
    def dali_cpu(self) -> Path:
        return self.artifacts / "model_cpu.dali"

    def flavor(self, name: str) -> Path:
        return self.build_dir / "repos" / name


@dataclasses.dataclass
class StageResult:
    name: str
    status: str  # "built" or "up to date"
    seconds: float
    report: dict[str, Any]


class Builder:
    """Runs the stages in order; each records a stamp with the digest of its inputs."""

    def __init__(self, layout: Layout, model: str = DEMO, force: bool = False, progress: Callable[[str], None] = print):
        self.layout = layout
        self.model = model
        self.force = force
        self.progress = progress
        self.bundle: Bundle = load_bundle(layout.repository)
        self.results: list[StageResult] = []

    # -- the stamp mechanism ------------------------------------------------------------------
    def _recorded(self, stamp: Path) -> dict[str, Any]:
        try:
            return json.loads(stamp.read_text())
        except (OSError, ValueError):
            return {}  # missing or unreadable: the stage runs again

    def _stage(self, name: str, inputs: dict[str, Any], outputs: list[Path], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run `run` unless the stamp says these inputs already made these (unchanged) outputs."""
        stamp = self.layout.stamps / f"{name}.json"
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        number = f"[{len(self.results) + 1}/{len(STAGES)}]"
        recorded = self._recorded(stamp)
        if not self.force and recorded.get("digest") == digest and recorded.get("outputs") == outputs_digest(outputs):
            self.progress(f"{number} {name}: up to date")
            self.results.append(StageResult(name, "up to date", 0.0, recorded.get("report", {})))
            return recorded.get("report", {})
        self.progress(f"{number} {name}: building")
        # A stage that fails must not leave a stamp that vouches for older outputs.
        stamp.unlink(missing_ok=True)
        started = time.monotonic()
        report = run()
        seconds = time.monotonic() - started
        stamp.parent.mkdir(parents=True, exist_ok=True)
        record = {"digest": digest, "outputs": outputs_digest(outputs), "inputs": inputs, "report": report}
        staging = stamp.with_suffix(".tmp")
        staging.write_text(json.dumps(record, indent=2, default=str))
        staging.replace(stamp)
        self.progress(f"{number} {name}: built in {seconds:.1f}s" + (f" ({report['summary']})" if "summary" in report else ""))
        self.results.append(StageResult(name, "built", seconds, report))
        return report

    # -- stages -------------------------------------------------------------------------------
    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.classifier.labels

    def _demo_labels(self) -> bool:
        return all(label in demo.SHAPES for label in self.labels)

    def heldout(self) -> dict[str, Any]:
        if not self._demo_labels():
            shutil.rmtree(self.layout.heldout, ignore_errors=True)  # images of other labels would mislead checks
            self.progress("[1/5] heldout: skipped (the labels are not demo shapes)")
            self.results.append(StageResult("heldout", "skipped", 0.0, {}))
            return {}

        def run():
            staging = self.layout.heldout.with_name("heldout.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            count = demo.write_heldout(self.labels, staging)
            replace_path(staging, self.layout.heldout)
            return {"images": count, "summary": f"{count} JPEGs in {self.layout.heldout}"}

        return self._stage(
            "heldout",
            {"labels": self.labels, "code": source_digest(demo)},
            [self.layout.heldout],
            run,
        )

    def _model_source(self) -> dict[str, Any]:
        if self.model == DEMO:
            try:
                demo.check_labels(self.labels)
            except ValueError as exc:
                raise ConfigError(self.bundle.label_path(self.bundle.classifier_config), str(exc)) from None
            return {
                "model": DEMO,
                "labels": self.labels,
                "preprocess": dataclasses.asdict(self.bundle.preprocess),
                "code": source_digest(demo, preprocess),
            }
        path = Path(self.model)
        if not path.is_file():
            raise intake.IntakeError(f"{path}: model file not found")
        return {"model": str(path.resolve()), "sha256": sha256_file(path)}

    def _train_demo(self) -> dict[str, Any]:
        import torch

        model = demo.train(self.labels, self.bundle.preprocess, progress=lambda m: self.progress(f"      {m}"))
        self.layout.artifacts.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), self.layout.demo_weights)
        return {"summary": f"weights in {self.layout.demo_weights}"}

    def _load_model(self):
        """(kind, torch module to export); the module is None for a user's ONNX file."""
        if self.model == DEMO:
            import torch

            module = demo.make_model(len(self.labels))
            module.load_state_dict(torch.load(self.layout.demo_weights, map_location="cpu"))
            return DEMO, module.eval()
        loaded = intake.load(Path(self.model))
        return loaded.kind, loaded.module

    def verification_inputs(self, limit: int | None = VERIFY_SAMPLES) -> np.ndarray:
        """Real images, preprocessed: (up to `limit` of) the held-out JPEGs, and the warmup images."""
        files = [path for _, path in demo.heldout_images(self.layout.heldout)][:limit]
        warmup = self.bundle.model_dir(self.bundle.preprocess.model_name) / "warmup"
        files += sorted(p for p in warmup.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(warmup, "no image to verify the model on: put a sample image (JPEG or PNG) in this folder "
                                      "and reference it in the preprocessing model_warmup")
        return np.stack([preprocess.reference(f.read_bytes(), self.bundle.preprocess) for f in files])

    def model_and_onnx(self) -> dict[str, Any]:
        source = self._model_source()
        if self.model == DEMO:
            self._stage("model", source, [self.layout.demo_weights], self._train_demo)
            source = {**source, "weights": sha256_file(self.layout.demo_weights)}
        else:
            self.progress(f"[2/5] model: {self.model} (sha256 {source['sha256'][:12]})")
            self.results.append(StageResult("model", "user model", 0.0, {"path": source["model"]}))

        def run():
            self.layout.artifacts.mkdir(parents=True, exist_ok=True)
            kind, module = self._load_model()
            # Verified before it takes the place of the last good export.
            staging = self.layout.onnx.with_suffix(".tmp.onnx")
            if module is None:
                shutil.copy2(self.model, staging)
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

        inputs = {
            "source": source,
            "classifier": dataclasses.asdict(self.bundle.classifier),
            "code": source_digest(export, intake),
            "versions": package_versions("torch", "onnx", "onnxruntime"),
        }
        return self._stage("onnx", inputs, [self.layout.onnx], run)

    def dali(self) -> dict[str, Any]:
        import nvidia.dali

        def run():
            self.layout.artifacts.mkdir(parents=True, exist_ok=True)
            self.layout.dali_cpu.write_bytes(preprocess.serialize(self.bundle.preprocess, "cpu"))
            return {"summary": f"{self.layout.dali_cpu.stat().st_size} bytes, DALI {nvidia.dali.__version__}"}

        inputs = {
            "preprocess": dataclasses.asdict(self.bundle.preprocess),
            "dali": nvidia.dali.__version__,
            "code": source_digest(preprocess),
        }
        return self._stage("dali", inputs, [self.layout.dali_cpu], run)

    def flavors(self, names: tuple[str, ...]) -> dict[str, Any]:
        artifacts = repository.Artifacts(onnx=self.layout.onnx, dali_cpu=self.layout.dali_cpu)

        def run():
            for name in names:
                target = repository.generate(self.bundle, name, self.layout.flavor(name), artifacts)
                report = validate(target, flavor=name, require_artifacts=True)
                if not report.ok():
                    shutil.rmtree(target)
                    details = "\n".join(str(f) for f in report.errors)
                    raise BuildError(f"the generated {name} repository does not validate:\n{details}")
            return {"summary": "validated " + ", ".join(str(self.layout.flavor(n)) for n in names)}

        inputs = {
            "flavors": names,
            "configs": sha256_tree(self.layout.repository, skip_versions=True),
            "onnx": sha256_file(self.layout.onnx),
            "dali": sha256_file(self.layout.dali_cpu),
            "local_models": sha256_tree(repository.LOCAL_MODELS),
            "code": source_digest(repository, config, validate_module),
        }
        return self._stage("flavors", inputs, [self.layout.flavor(n) for n in names], run)

    def run(self, flavors: tuple[str, ...] = repository.FLAVORS) -> list[StageResult]:
        self.heldout()
        self.model_and_onnx()
        self.dali()
        self.flavors(flavors)
        return self.results


STAGES = ("heldout", "model", "onnx", "dali", "flavors")
