"""`make backends`: what it needs, where its sources come from, and that a second run does nothing."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from scripts import backends
from scripts.build import Builder
from scripts.layout import PROJECT


def test_a_missing_system_tool_is_named_with_its_package(tmp_path):
    """With no compiler, make or patch on PATH, the build refuses before it starts and says what to install."""
    bare = tmp_path / "bin"
    bare.mkdir()
    code = ("from scripts import backends\n"
            "try:\n    backends.toolchain()\nexcept backends.ToolchainMissing as exc:\n    print(exc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT,
                          env={**os.environ, "PATH": str(bare)})
    assert done.returncode == 0, done.stderr
    on_path = [(what, package) for what, package, _ in backends.SYSTEM_NEEDS if package != "rapidjson-dev"]
    for what, package in on_path:
        assert f"{what}: from the system (Debian: apt-get install {package})" in done.stdout, done.stdout
    listed = subprocess.run([sys.executable, "-m", "scripts.backends"], capture_output=True, text=True, cwd=PROJECT,
                            env={**os.environ, "PATH": str(bare)}).stdout.split()
    assert {"g++", "make", "patch"} <= set(listed)


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_sources_are_cloned_at_their_pinned_revision_when_no_archives_are_given(tmp_path, monkeypatch):
    """The clone path, against a local repository holding two revisions: the pinned one is checked out,
    only the listed paths of a sparse source, and the project's patch applies to it."""
    archives = os.environ.get(backends.SOURCES_ENV, "")
    common = next(s for s in backends.SOURCES if s.name == "common")
    if not (Path(archives) / common.archive).is_file():
        pytest.skip(f"no source archive of {common.name} to make a repository from (${backends.SOURCES_ENV}, set by make)")
    origin = tmp_path / "origin"
    with tarfile.open(Path(archives) / common.archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    shutil.copytree(next((tmp_path / "unpacked").iterdir()), origin)
    git("init", "-q", cwd=origin)
    # As GitHub does: a commit can be fetched by its id, and a fetch can leave the file contents out.
    git("config", "uploadpack.allowReachableSHA1InWant", "true", cwd=origin)
    git("config", "uploadpack.allowFilter", "true", cwd=origin)
    git("add", "-A", cwd=origin)
    git("commit", "-q", "-m", "pinned", cwd=origin)
    pinned = subprocess.run(["git", "rev-parse", "HEAD"], cwd=origin, capture_output=True, text=True).stdout.strip()
    (origin / "LATER").write_text("a later commit")
    git("add", "-A", cwd=origin)
    git("commit", "-q", "-m", "later", cwd=origin)

    monkeypatch.delenv(backends.SOURCES_ENV, raising=False)
    log = tmp_path / "log"
    source = backends.Source("common", origin.as_uri(), pinned, common.archive, common.sha256)
    backends.fetch(source, tmp_path / "common", log)
    assert (tmp_path / "common" / "src" / "CMakeLists.txt").is_file() and not (tmp_path / "common" / "LATER").exists()
    assert backends.apply_patches(tmp_path / "common", log) == ["common.patch"]
    assert "add_subdirectory(test)" not in (tmp_path / "common" / "src" / "CMakeLists.txt").read_text()

    sparse = backends.Source("sparse", origin.as_uri(), pinned, common.archive, common.sha256, paths=("src/CMakeLists.txt",))
    backends.fetch(sparse, tmp_path / "sparse", log)
    files = [p for p in (tmp_path / "sparse").rglob("*") if p.is_file() and ".git" not in p.parts]
    assert [p.relative_to(tmp_path / "sparse").as_posix() for p in files] == ["src/CMakeLists.txt"]


def test_a_missing_or_different_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(backends.SOURCES_ENV, str(tmp_path))
    source = backends.SOURCES[0]
    with pytest.raises(backends.BackendBuildError, match=rf"{source.archive} not found"):
        backends.fetch(source, tmp_path / "out", tmp_path / "log")
    with tarfile.open(tmp_path / source.archive, "w:gz") as tar:  # right name, other content
        tar.add(PROJECT / "scripts" / "triton_backends", arcname="core")
    with pytest.raises(backends.BackendBuildError, match="not the pinned"):
        backends.fetch(source, tmp_path / "out", tmp_path / "log")
    assert not (tmp_path / "out").exists()


def test_the_build_stamp_changes_with_what_the_backends_are_built_from(built, tmp_path, monkeypatch):
    """A patch, the CMake include or a pinned source changing makes `make backends` rebuild (the stamp's inputs)."""
    builder = Builder(built, progress=lambda message: None)
    before = builder.backends_inputs()
    patches = tmp_path / "patches"
    shutil.copytree(backends.PATCHES, patches)
    (patches / "common.patch").write_text((patches / "common.patch").read_text() + "\n")
    monkeypatch.setattr(backends, "PATCHES", patches)
    assert builder.backends_inputs()["patches"] != before["patches"]
    moved = (dataclasses.replace(backends.SOURCES[0], revision="0" * 40), *backends.SOURCES[1:])
    monkeypatch.setattr(backends, "SOURCES", moved)
    assert builder.backends_inputs()["sources"] != before["sources"]


@pytest.mark.integration
def test_a_second_build_does_nothing_and_the_inputs_name_every_version(triton_backends):
    builder = Builder(triton_backends, progress=lambda message: None)
    (result,) = builder.run(only=("backends",))
    assert result.status == "up to date"
    versions = builder.backends_inputs()["versions"]
    assert {"compiler", "cmake", "dali", "onnxruntime", "tritonserver", "cudart"} <= set(versions)
    for name in backends.BACKENDS:
        assert (triton_backends.backends / name / backends.BUILDS[name].library).is_file()


def test_a_server_without_the_backends_its_repository_needs_says_how_to_get_them(built, tmp_path):
    from scripts.constants import CPU, LOCAL
    from scripts.serve import local_server, missing_backends
    from scripts.tritonserver import ServerError

    empty = tmp_path / "backends"
    assert missing_backends(built.flavor(CPU), empty) == sorted(backends.BACKENDS)
    assert missing_backends(built.flavor(LOCAL), empty) == []  # the python backend comes with the server
    server = local_server(built, built.flavor(CPU))
    server.backends = empty
    with pytest.raises(ServerError, match="needs the dali, onnxruntime backend.*`make backends`"):
        server.start()
    assert server.process is None
