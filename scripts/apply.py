"""Apply: an edited model_repository/ to a running server, live, with no failed request; back out on failure.

The day-2 loop for ops: edit config.pbtxt -> `make apply`. Each step prints its progress:

1. rebuild   what the edit invalidates: the incremental build of the flavor the server runs (local, cpu);
             on the GPU box the builder owns the engine and the pipeline's dali.py: a stale one stops apply
2. validate  strictly (warnings too): refuse on any finding, and leave the server untouched
3. diff      the models that differ from what the server runs: their config (the config API), or their files
4. load      exactly those, through the repository API (one step alone; more than one: the ensemble,
             which makes Triton reload its changed steps together)
5. verify    every model ready, the live configs are the intended ones, and real images (the warmup
             sample and held-out ones) get the same top-1 as before, unless --expect-change
6. roll back on a failed load or verification: the previous files and configs back, reloaded

The server must run with TRITON_MODEL_CONTROL_MODE=explicit. Every apply appends a record to
build/apply/audit.jsonl. Measured on this machine's tritonserver 2.51 (tests/test_apply.py): a
steady gRPC and HTTP load sees no failed request while a model reloads, and a failed load keeps the
previous model serving, so plain reloads are enough; no version-folder scheme is needed.
"""

from __future__ import annotations

import dataclasses
import datetime
import getpass
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from scripts import plan_metadata
from scripts.build import Builder, ModelChoice, model_choice, recorded_model
from scripts.config import Bundle, ConfigError, load_bundle
from scripts.constants import CONFIG_FILENAME, DEMO_MODEL, GPU, TENSORRT_PLAN
from scripts.layout import Layout
from scripts.live import LiveServer, Refused, Unreachable
from scripts.validate import Difference, diff_live, validate

APPLIED, NOTHING, REFUSED, ROLLED_BACK, UNREACHABLE = "applied", "nothing", "refused", "rolled-back", "unreachable"
EXIT_CODES = {APPLIED: 0, NOTHING: 0, REFUSED: 1, UNREACHABLE: 2, ROLLED_BACK: 3}
STEPS = ("rebuild", "validate", "diff", "load", "verify", "roll back")
SMOKE_HELDOUT = 8  # held-out images in the smoke check, beside the warmup sample


@dataclasses.dataclass
class Outcome:
    result: str
    changed: list[str]
    differences: list[Difference]
    seconds: float
    reason: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.result]

    def summary(self) -> str:
        return f"apply: changed={','.join(self.changed) or '-'} result={self.result} seconds={self.seconds:.1f}"

    def record(self, **context) -> dict:
        return {"result": self.result, "changed": self.changed, "diff": [dataclasses.asdict(d) for d in self.differences],
                "seconds": round(self.seconds, 2), "reason": self.reason, **context}


def model_digests(repository: Path) -> dict[str, str]:
    """A digest of each model folder's files (names and contents)."""
    from scripts.build import sha256_tree

    return {path.parent.name: sha256_tree(path.parent) for path in sorted(repository.glob(f"*/{CONFIG_FILENAME}"))}


def smoke_images(bundle: Bundle, layout: Layout) -> list[Path]:
    from scripts.demo import heldout_images

    held_out = [path for _, path in heldout_images(layout.heldout)]
    step = max(1, len(held_out) // SMOKE_HELDOUT)
    return bundle.warmup_images + held_out[::step][:SMOKE_HELDOUT]


def top1(url: str, admin_key: str | None, images: list[Path], model: str) -> list[str]:
    """The top label of each image through the served ensemble (the project's client, over HTTP)."""
    from client import ImageClassifierClient

    with ImageClassifierClient(url, protocol="http", model=model, admin_key=admin_key, timeout=60) as classifier:
        return [result.top.label if result.ok else f"error: {result.error}" for result in classifier.classify(images, top_k=1)]


def gpu_artifacts_stale(bundle: Bundle) -> list[str]:
    """Why the GPU box's builder must run before this edit can go live ([] = it need not)."""
    from scripts import engine
    from scripts.repository import gpu_model_files

    reasons = []
    for path, text in gpu_model_files(bundle).items():
        if not path.is_file() or path.read_text() != text:
            reasons.append(f"{path} is not what this repository's configs and code make")
    plan = bundle.artifact(bundle.classifier.model_name, TENSORRT_PLAN)
    metadata = plan_metadata.read(plan)
    if metadata is None:
        return [*reasons, f"{plan} has no engine metadata (build the engine first)"]
    try:
        if plan_metadata.profile(metadata) != engine.profile_for(bundle.classifier):
            reasons.append(f"the engine's batch profile {plan_metadata.profile(metadata)} is not the config's "
                           f"{engine.profile_for(bundle.classifier)}")
    except (ValueError, engine.EngineError) as exc:
        reasons.append(str(exc))
    if plan_metadata.inputs(metadata).get(bundle.classifier.input_name) != list(bundle.classifier.input_dims):
        reasons.append("the classifier's input dims changed")
    return reasons


def loaded_record(layout: Layout, flavor: str) -> Path:
    """Where the digests of what the server loaded are kept, per flavor."""
    return layout.build_dir / "apply" / f"loaded-{flavor}.json"


def mark_loaded(layout: Layout, flavor: str) -> Path:
    """Record the flavor's repository as what the server has loaded: `make serve` does when its server is
    ready, apply after each change, the GPU box's builder before the server starts on its output."""
    path = loaded_record(layout, flavor)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model_digests(layout.flavor(flavor)), indent=2))
    return path


def _touch(folder: Path) -> None:
    """Make a model folder newer than what the server loaded: Triton reloads a model only when something
    in its folder is newer (core model_repository_manager.cc, ModelTimestamp::IsModified)."""
    now = time.time_ns()
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, ns=(now, now))


@dataclasses.dataclass
class Apply:
    layout: Layout
    flavor: str
    server: LiveServer
    admin_key: str | None
    model: str | None = None  # what the build exports: default, what the last build did
    expect_change: bool = False
    progress: Callable[[str], None] = print

    @property
    def live(self) -> Path:
        return self.layout.flavor(self.flavor)

    @property
    def snapshot_dir(self) -> Path:
        return self.layout.build_dir / "apply" / "previous"

    def step(self, name: str, message: str) -> None:
        self.progress(f"[{STEPS.index(name) + 1}/{len(STEPS)}] {name}: {message}")

    def run(self) -> Outcome:
        started = time.monotonic()
        changed: list[str] = []
        differences: list[Difference] = []
        snapshot = False

        def outcome(result: str, reason: str = "") -> Outcome:
            if reason:
                self.progress(f"{result}: {reason}")
            return Outcome(result, changed, differences, time.monotonic() - started, reason)

        try:
            self.server.check()
            try:
                bundle = load_bundle(self.live)  # what the server runs (on the GPU box: ops' edited repository)
            except ConfigError as exc:
                raise Refused(str(exc)) from None
            images = smoke_images(bundle, self.layout)
            before = top1(self.server.url, self.admin_key, images, bundle.ensemble.name)
            broken = [label for label in before if label.startswith("error")]
            if broken:
                raise Refused(f"the server fails the smoke images before any change ({broken[0]}): fix that first")
            loaded = self.loaded_digests()
            previous_configs = self.live_configs()
            snapshot = self.snapshot()
            try:
                self.rebuild()
                self.check_repository()
                differences = diff_live(self.live, self.server.url, self.server.headers)
            except (Refused, ConfigError, PermissionError) as exc:
                self.restore()
                raise Refused(str(exc)) from None
            changed = self.changed_models(loaded, differences, bundle)
            self.step("diff", f"{', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from what the server runs"
                      if changed else "nothing differs from what the server runs")
            if not changed:
                return outcome(NOTHING)
            failure = self.load(changed, bundle)
            failure = failure or self.verify(images, before)
            if failure is None:
                mark_loaded(self.layout, self.flavor)
                return outcome(APPLIED)
            self.roll_back(changed, previous_configs, bundle)
            mark_loaded(self.layout, self.flavor)
            return outcome(ROLLED_BACK, failure)
        except Refused as exc:
            return outcome(REFUSED, str(exc))
        except Unreachable as exc:
            if snapshot and changed:
                self.restore()  # the server went away mid-change: at least the files are what it last ran
            return outcome(UNREACHABLE, str(exc))
        except Exception as exc:  # anything else: report it, and undo what was done
            reason = f"{type(exc).__name__}: {exc}"
            if not changed:
                if snapshot:
                    self.restore()
                return outcome(REFUSED, reason)
            try:
                self.roll_back(changed, previous_configs, bundle)
            except Exception as failure:  # the rollback too: say so, with both reasons
                if snapshot:
                    self.restore()
                return outcome(UNREACHABLE, f"{reason}; the rollback failed too: {type(failure).__name__}: {failure}")
            return outcome(ROLLED_BACK, reason)

    # -- the steps -----------------------------------------------------------------------------
    def loaded_digests(self) -> dict[str, str]:
        """What the server loaded: its record, else the repository as it is before this apply rebuilds it."""
        try:
            return json.loads(loaded_record(self.layout, self.flavor).read_text())
        except (OSError, ValueError):
            if self.flavor == GPU:
                self.progress(f"      no record of what the server loaded ({loaded_record(self.layout, self.flavor)}): "
                              "only config differences can be seen")
            return model_digests(self.live)

    def live_configs(self) -> dict[str, dict]:
        """The config each served model runs with now (what a rollback loads back)."""
        from tritonclient.utils import InferenceServerException

        configs = {}
        for name, state in self.server.index().items():
            if state == "READY":
                try:
                    configs[name] = self.server.config(name)
                except InferenceServerException:
                    continue
        return configs

    def snapshot(self) -> bool:
        """Keep a copy of the live repository's files (generated flavors: the committed ones are ops')."""
        if self.flavor == GPU:
            return False
        shutil.rmtree(self.snapshot_dir, ignore_errors=True)
        shutil.copytree(self.live, self.snapshot_dir)
        return True

    def restore(self) -> None:
        """Put the snapshot's files back (generated flavors)."""
        if self.flavor == GPU:
            return
        staging = self.live.with_name(self.live.name + ".restore")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(self.snapshot_dir, staging)
        shutil.rmtree(self.live, ignore_errors=True)
        staging.rename(self.live)

    def rebuild(self) -> None:
        if self.flavor == GPU:
            stale = gpu_artifacts_stale(load_bundle(self.layout.repository))
            if stale:
                raise Refused("the builder must run first (" + "; ".join(stale) + "): "
                              "`docker compose run --rm builder`, then apply again")
            self.step("rebuild", "the gpu flavor's artifacts fit the configs")
            return
        choice = model_choice(self.layout, self.model)
        if choice.model == DEMO_MODEL and recorded_model(self.layout):  # the model the running server was built with
            choice = ModelChoice(recorded_model(self.layout))
        self.step("rebuild", f"the {self.flavor} flavor ({choice.model} model), only what the edit invalidates")
        from scripts.backends import BackendBuildError
        from scripts.build import BuildError
        from scripts.export import ExportError
        from scripts.intake import IntakeError

        try:
            results = Builder(self.layout, model=choice.model, code=choice.code,
                              progress=lambda m: self.progress(f"      {m}")).run((self.flavor,))
        except (BuildError, ExportError, IntakeError, BackendBuildError) as exc:
            raise Refused(f"the build failed: {exc}") from None
        built = [r.name for r in results if r.status == "built"]
        self.progress(f"      rebuilt: {', '.join(built) or 'nothing'}")

    def check_repository(self) -> None:
        report = validate(self.live, flavor=self.flavor, require_artifacts=True)
        if not report.ok(strict=True):
            shown = [str(f) for f in report.findings if f.severity != "note"]
            raise Refused(f"{report.summary()}\n" + "\n".join(shown))
        self.step("validate", report.summary())

    def changed_models(self, loaded: dict[str, str], differences: list[Difference], bundle: Bundle) -> list[str]:
        """Models whose config differs from the live one, or whose files differ from what the server loaded,
        steps first."""
        current = model_digests(self.live)
        names = {d.model for d in differences} | {name for name in current if current[name] != loaded.get(name)}
        return sorted(names, key=lambda name: (name == bundle.ensemble.name, name))

    def load(self, changed: list[str], bundle: Bundle, configs: dict[str, dict] | None = None,
             step: str = "load") -> str | None:
        """Load the changed models; the failure, if one fails. With `configs`, each with its config override."""
        from tritonclient.utils import InferenceServerException

        # More than one without overrides: load the ensemble, and Triton reloads its changed steps with it.
        targets = changed if len(changed) == 1 or configs is not None else [bundle.ensemble.name]
        for name in targets:
            started = time.monotonic()
            try:
                self.server.load(name, config=configs.get(name) if configs else None)
            except InferenceServerException as exc:
                self.step(step, f"{name} failed to load: {exc.message()}")
                return f"{name} failed to load: {exc.message()}"
            self.step(step, f"{name} loaded in {time.monotonic() - started:.2f}s")
        return None

    def serving_as_intended(self) -> str | None:
        not_ready = {name: state for name, state in self.server.index().items() if state != "READY"}
        if not_ready:
            return f"models not ready: {not_ready}"
        remaining = diff_live(self.live, self.server.url, self.server.headers)
        if remaining:
            return "the live configs are not the intended ones: " + "; ".join(map(str, remaining))
        return None

    def verify(self, images: list[Path], before: list[str]) -> str | None:
        """Every model ready, the live configs the intended ones, the same answers; the failure, if any."""
        failure = self.serving_as_intended()
        if failure:
            return failure
        ensemble = load_bundle(self.live).ensemble.name
        after = top1(self.server.url, self.admin_key, images, ensemble)
        errors = [(image.name, label) for image, label in zip(images, after, strict=True) if label.startswith("error")]
        if errors:
            return f"{len(errors)} of {len(images)} smoke images failed after the change (e.g. {errors[0][0]}: {errors[0][1]})"
        moved = [(image.name, old, new) for image, old, new in zip(images, before, after, strict=True) if old != new]
        if moved and not self.expect_change:
            return (f"{len(moved)} of {len(images)} smoke images changed their top-1 (e.g. {moved[0][0]}: "
                    f"{moved[0][1]} -> {moved[0][2]}); pass --expect-change if the edit is meant to change results")
        self.step("verify", f"all models ready, live configs as intended, top-1 of {len(images)} images "
                            + (f"changed for {len(moved)} (expected)" if moved else "unchanged"))
        return None

    def roll_back(self, changed: list[str], configs: dict[str, dict], bundle: Bundle) -> None:
        """The previous files back in place and reloaded as the forward load did; on the GPU box, where
        the files are ops', each changed model loaded with the config it ran before."""
        if self.flavor == GPU:
            failure = self.load(changed, bundle, configs=configs, step="roll back")
        else:
            self.restore()
            for name in changed:
                _touch(self.live / name)
            failure = self.load(changed, bundle, step="roll back")
        state = failure or (self.serving_as_intended() if self.flavor != GPU else None)
        self.step("roll back", ("the previous configs are live again" if state is None else f"incomplete: {state}")
                  + f"; {self.layout.repository} still holds the edit: fix it and apply again")


def audit(layout: Layout, record: dict) -> Path:
    """Append one record to build/apply/audit.jsonl (never the admin key)."""
    path = layout.build_dir / "apply" / "audit.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid with no name (a container run as --user <uid>)
        user = str(os.getuid())
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "user": user, "pid": os.getpid(), **record}
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return path


def apply(layout: Layout, flavor: str, url: str, admin_key: str | None, model: str | None = None,
          expect_change: bool = False, progress: Callable[[str], None] = print) -> Outcome:
    server = LiveServer(url, admin_key)
    try:
        outcome = Apply(layout, flavor, server, admin_key, model, expect_change, progress).run()
    finally:
        server.close()
    audit(layout, outcome.record(flavor=flavor, server=url))  # run() returns an outcome whatever happened
    return outcome
