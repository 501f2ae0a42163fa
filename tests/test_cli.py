"""The build CLI: --help, --json for scripts, and exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from scripts.build import STAGES
from scripts.constants import GENERATED_FLAVORS
from scripts.layout import PROJECT
from tests.conftest import REPOSITORY


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "scripts", *args], capture_output=True, text=True, cwd=PROJECT, timeout=timeout)


def test_help_lists_the_commands():
    done = run("--help")
    assert done.returncode == 0
    assert "build" in done.stdout and "serve" in done.stdout


def test_build_json_reports_every_stage(built):
    done = run("build", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    statuses = {stage["name"]: stage["status"] for stage in report["stages"]}
    assert list(statuses) == [stage.name for stage in STAGES]
    assert statuses == {stage.name: "skipped" if stage.on_request else "up to date" for stage in STAGES}
    assert set(report["flavors"]) == set(GENERATED_FLAVORS)
    for number, stage in enumerate(STAGES, start=1):  # progress on stderr, numbered from the one list
        assert f"[{number}/{len(STAGES)}] {stage.name}: {statuses[stage.name]}" in done.stderr


def test_build_help_lists_every_stage_in_order():
    done = run("build", "--help")
    assert done.returncode == 0
    listed = [line.split()[1] for line in done.stdout.splitlines() if line.strip()[:2].rstrip(".").isdigit()]
    assert listed == [stage.name for stage in STAGES]


def test_missing_model_file_is_a_usage_error(tmp_path):
    done = run("build", "--model", str(tmp_path / "nope.pth"), "--build-dir", str(tmp_path / "build"))
    assert done.returncode == 2
    assert "nope.pth: model file not found" in done.stderr


def test_broken_config_is_a_usage_error_naming_the_file(tmp_path):
    import shutil

    repo = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repo)
    config = repo / "classifier" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 6 ]", "dims: [ 6 "))
    done = run("build", "--repository", str(repo), "--build-dir", str(tmp_path / "build"))
    assert done.returncode == 2
    assert f"{config}:" in done.stderr and "error [parse-error]" in done.stderr


def test_the_readme_lists_the_build_stages_in_order():
    readme = (PROJECT / "README.md").read_text()
    section = readme[readme.index("### What the build does"):]
    section = section[:section.index("\n## ")]
    assert re.findall(r"^\d+\. \*\*(\w+)\*\*", section, re.M) == [stage.name for stage in STAGES]
