"""What each NGC release of the server and builder images holds, and the security bulletins that name it.

`.env` pins NGC_RELEASE; `make doctor` checks the host against that release's row (driver, GPU) and
warns when a bulletin lists the pinned release as affected. Every figure was read from the source
named beside it (November 2026); None means it was not found, and "(inferred)" that it was read off
Triton's own repository rather than NVIDIA's release notes.
"""

from __future__ import annotations

import dataclasses

# Triton: the server repository's TRITON_VERSION on branch rYY.MM. CUDA and "compute capability 7.5 and
# later": the Triton release notes (docs.nvidia.com/deeplearning/triton-inference-server/release-notes/
# rel-YY-MM.html). Their driver sentence ("575 or later" up to 26.04, no figure from 26.06 on) is below
# CUDA 13's own floor: CUDA 13.x needs driver >= 580 (CUDA minor version compatibility, Table 1,
# docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html), and the CUDA 13.0 Update 2
# toolkit of 25.10 asks >= 580.95.05 (CUDA 13.0 release notes, Table 3). DALI: dali_backend's
# DALI_VERSION file on branch rYY.MM; not found from 26.07 on. TensorRT: not in the sources read; 11 from
# 26.06 on is inferred from the server repository (commit d898a0fe6 on r26.06, "TRT 11 QA compat").
# TensorRT 11 removed BuilderFlag.FP16 (TensorRT 10.x to 11.x migration guide); the engine build does not
# use it. Newer releases (26.09: CUDA 13.4.1; 26.10: CUDA 13.4.3) have release notes but no Triton version
# found: not listed.
CUDA13_MIN_DRIVER = "580"
MIN_COMPUTE_CAPABILITY = "7.5"  # of the CUDA 13 releases (Turing and later)


@dataclasses.dataclass(frozen=True)
class Release:
    ngc: str
    triton: str
    cuda: str
    min_driver: str  # the lowest NVIDIA driver that runs the release's CUDA
    dali: str | None  # the DALI inside the server image (the DALI backend's)
    tensorrt: str | None
    min_compute_capability: str = MIN_COMPUTE_CAPABILITY


RELEASES = {r.ngc: r for r in (
    # The tritonserver inside the nvidia-pytriton 0.7.0 wheel, which the local and cpu flavors run.
    Release("24.10", "2.51.0", "12.6.2", "560", None, None, min_compute_capability="6.0"),
    Release("25.10", "2.62.0", "13.0.2", "580.95.05", "1.51.2", None),
    Release("26.02", "2.66.0", "13.1.1", CUDA13_MIN_DRIVER, "1.53.0", None),
    Release("26.04", "2.68.0", "13.2.1", CUDA13_MIN_DRIVER, "2.0.0", "10.x (inferred)"),
    Release("26.06", "2.70.0", "13.3.0", CUDA13_MIN_DRIVER, "2.1.1", "11.x (inferred)"),
    Release("26.07", "2.71.0", "13.3.1", CUDA13_MIN_DRIVER, None, "11.x (inferred)"),
    Release("26.08", "2.72.0", "13.4.1", CUDA13_MIN_DRIVER, None, "11.x (inferred)"),
)}


@dataclasses.dataclass(frozen=True)
class Bulletin:
    """CVEs of one NVIDIA security bulletin for Triton that one release fixed (github.com/NVIDIA/product-security,
    YYYY/<id>/<id>.md, "Affected Versions" / "Updated Version"). A bulletin whose CVEs were fixed in different
    releases (5875) has a row per release."""

    id: str
    published: str
    cves: tuple[str, ...]
    summary: str
    fixed_in: str  # the first NGC release without them

    def affects(self, ngc: str) -> bool:
        return _order(ngc) < _order(self.fixed_in)


BULLETINS = (
    # 5612 names 24.11 as affected and says earlier branches are too.
    Bulletin("5612", "2025-02-11", ("CVE-2024-53880",), "integer overflow in the model-loading API (DoS)", "24.12"),
    Bulletin("5687", "2025-08-04", ("CVE-2025-23323", "CVE-2025-23324", "CVE-2025-23325", "CVE-2025-23326", "CVE-2025-23327",
                                    "CVE-2025-23335"),
             "integer overflows and uncontrolled recursion from crafted requests (DoS)", "25.05"),
    Bulletin("5687", "2025-08-04", ("CVE-2025-23322", "CVE-2025-23331"),
             "double free on an early-cancelled stream, excessive allocation (DoS)", "25.06"),
    Bulletin("5687", "2025-08-04", ("CVE-2025-23310", "CVE-2025-23311", "CVE-2025-23317", "CVE-2025-23318", "CVE-2025-23319",
                                    "CVE-2025-23268", "CVE-2025-23320", "CVE-2025-23321", "CVE-2025-23333", "CVE-2025-23334"),
             "HTTP stack overflows from chunked requests and a reverse shell (RCE, CVSS 9.8); python backend "
             "out-of-bounds writes and reads, shared memory; DALI backend input validation", "25.07"),
    # 5691 also lists CVE-2025-23268 (DALI backend), fixed in 25.07: counted once, above.
    Bulletin("5691", "2025-09-16", ("CVE-2025-23316", "CVE-2025-23328", "CVE-2025-23329", "CVE-2025-23336"),
             "python backend model-name RCE (CVSS 9.8), out-of-bounds write, shared-memory access, model load (DoS)",
             "25.08"),
    Bulletin("5723", "2025-11", ("CVE-2025-33202",), "stack overflow from extra-large payloads (DoS)", "25.09"),
    Bulletin("5734", "2025-12-02", ("CVE-2025-33201", "CVE-2025-33211"),
             "extra-large payloads, unchecked quantities (DoS)", "25.10"),
    Bulletin("5790", "2026-03", ("CVE-2025-33238", "CVE-2025-33254", "CVE-2026-24158"),
             "SageMaker HTTP server, large compressed payloads (DoS)", "26.01"),
    Bulletin("5816", "2026-04", ("CVE-2026-24146", "CVE-2026-24147", "CVE-2026-24173", "CVE-2026-24174", "CVE-2026-24175"),
             "crashes (DoS), path traversal through an uploaded model config", "26.02"),
    Bulletin("5828", "2026-05", ("CVE-2026-24207", "CVE-2026-24206", "CVE-2026-24213", "CVE-2026-24214", "CVE-2026-24215",
                                 "CVE-2026-24208", "CVE-2026-24209", "CVE-2026-24210"),
             "authentication bypass (CVSS 9.8); DALI backend out-of-bounds read, integer overflow", "26.03"),
    Bulletin("5860", "2026-08-04", ("CVE-2026-47487",), "MLflow plugin path traversal", "26.03"),
    Bulletin("5848", "2026-06-30", ("CVE-2026-24264", "CVE-2026-24266"), "compressed data, use after free", "26.04"),
    Bulletin("5875", "2026-09-08", ("CVE-2026-47625",), "missing authorization (DoS, tampering)", "26.04"),
    Bulletin("5853", "2026-07", ("CVE-2026-47476", "CVE-2026-47477", "CVE-2026-47478", "CVE-2026-47479", "CVE-2026-47480",
                                 "CVE-2026-47481", "CVE-2026-47482"), "denial of service, authentication bypass", "26.05"),
    Bulletin("5865", "2026-08-18", ("CVE-2026-47627", "CVE-2026-47628", "CVE-2026-47629", "CVE-2026-47606", "CVE-2026-47630"),
             "path traversal (CVSS 9.8)", "26.06"),
    Bulletin("5875", "2026-09-08", ("CVE-2026-16497",), "excessive iteration (DoS)", "26.07"),
)


def _order(ngc: str) -> tuple[int, ...]:
    return tuple(int(part) for part in ngc.split("."))


def version_tuple(version: str) -> tuple[int, ...]:
    """"580.95.05" -> (580, 95, 5), for comparing driver versions."""
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def affecting(ngc: str) -> list[Bulletin]:
    """The bulletins whose fixes `ngc` does not have yet."""
    return [bulletin for bulletin in BULLETINS if bulletin.affects(ngc)]


def of_triton(version: str) -> Release | None:
    """The NGC release whose Triton is `version` ("2.51.0")."""
    return next((release for release in RELEASES.values() if release.triton == version), None)


def first_clear_release() -> str | None:
    """The oldest known release that no known bulletin affects."""
    clear = [ngc for ngc in RELEASES if not affecting(ngc)]
    return min(clear, key=_order) if clear else None
