"""Where everything lives: the project, the committed repository, and every path the build writes.

`Layout()` is the project's own checkout; tests and benchmarks make layouts of their own (a copied
repository, a scratch build folder). Paths inside a model repository come from `config.Bundle`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scripts.constants import COMMITTED_FLAVOR, ONNX_MODEL

PROJECT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = PROJECT / "docker-compose.yml"  # the GPU box's stack
MONITORING = PROJECT / "monitoring"  # Prometheus config and rules, their tests, Grafana's provisioning and dashboards
SECRETS = PROJECT / "secrets"  # git-ignored but for its README files: the admin key, gRPC's TLS files


@dataclasses.dataclass(frozen=True)
class Layout:
    repository: Path = PROJECT / "model_repository"  # committed, the source of truth
    build_dir: Path = PROJECT / "build"  # git-ignored: everything below is generated

    @property
    def project(self) -> Path:
        """The folder that holds the repository: paths recorded relative to it resolve in the builder container too."""
        return self.repository.resolve().parent

    @property
    def artifacts(self) -> Path:
        return self.build_dir / "artifacts"

    @property
    def onnx(self) -> Path:
        return self.artifacts / ONNX_MODEL

    @property
    def demo_weights(self) -> Path:
        return self.artifacts / "demo_model.pt"

    @property
    def dali_cpu(self) -> Path:
        """The preprocessing pipeline serialized with CPU operators (the cpu and local flavors' model.dali)."""
        return self.artifacts / "model_cpu.dali"

    @property
    def heldout(self) -> Path:
        """The demo's held-out JPEGs, <label>/<n>.jpg."""
        return self.build_dir / "demo" / "heldout"

    @property
    def stamps(self) -> Path:
        return self.build_dir / "stamps"

    @property
    def backends(self) -> Path:
        """The backend directory the local tritonserver loads: python/ (with its stub), and dali/ and
        onnxruntime/ once `make backends` has built them."""
        return self.build_dir / "backends"

    @property
    def backends_work(self) -> Path:
        """Scratch space of the backend build: fetched sources, CMake trees, its log."""
        return self.build_dir / "backends-work"

    @property
    def trt_cache(self) -> Path:
        """TensorRT timing caches, one per TensorRT version and GPU architecture."""
        return self.build_dir / "trt"

    @property
    def logs(self) -> Path:
        return self.build_dir / "logs"

    @property
    def bench(self) -> Path:
        return self.build_dir / "bench"

    @property
    def soak(self) -> Path:
        return self.build_dir / "soak"

    @property
    def tune(self) -> Path:
        """`make tune`'s report and patch."""
        return self.build_dir / "tune"

    @property
    def monitor(self) -> Path:
        """`make monitor`'s Prometheus: its generated config and its data."""
        return self.build_dir / "monitor"

    def flavor(self, name: str) -> Path:
        """The model repository of flavor `name`: the committed one for gpu, a generated one otherwise."""
        return self.repository if name == COMMITTED_FLAVOR else self.build_dir / "repos" / name
