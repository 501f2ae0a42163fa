"""Shared fixtures: the committed bundle, a built project, and real tritonservers on free ports: the
local flavor (python backend) and the cpu flavor (Triton's DALI and ONNX Runtime backends)."""

from __future__ import annotations

import os

import pytest

from scripts.backends import ToolchainMissing
from scripts.build import Builder, model_choice
from scripts.config import load_bundle
from scripts.constants import CPU, DEMO_MODEL, LOCAL
from scripts.layout import Layout
from scripts.serve import local_server

REPOSITORY = Layout().repository


@pytest.fixture(scope="session")
def bundle():
    return load_bundle(REPOSITORY)


@pytest.fixture(scope="session")
def built():
    """The project's own build (the same one `make build` makes; a no-op when up to date).

    $MODEL (the compose `verify` service passes the deployed one) keeps a bring-your-own model's build.
    """
    layout = Layout()
    choice = model_choice(layout, os.environ.get("MODEL") or None, tuple(filter(None, [os.environ.get("MODEL_CODE")])))
    Builder(layout, model=choice.model, code=choice.code, progress=lambda message: None).run()
    return layout


@pytest.fixture(scope="session")
def server(built, tmp_path_factory):
    """The local flavor."""
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with local_server(built, log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def triton_backends(built):
    """Triton's DALI and ONNX Runtime backends for the local tritonserver (`make backends`; stamped).

    Without a C++ compiler or RapidJSON the cpu-flavor tests skip, saying what to install; in CI they
    must run, so there the missing tool is an error.
    """
    try:
        Builder(built, progress=lambda message: None).run(only=("backends",))
    except ToolchainMissing as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the cpu flavor needs Triton's backends built here: {exc}")
    return built


@pytest.fixture(scope="session")
def cpu_server(triton_backends, tmp_path_factory):
    """The cpu flavor: the production configs on Triton's own DALI (CPU) and ONNX Runtime backends."""
    log = tmp_path_factory.mktemp("cpu-server") / "tritonserver.log"
    with local_server(triton_backends, triton_backends.flavor(CPU), log_path=log) as running:
        yield running


@pytest.fixture(params=[LOCAL, CPU])
def any_server(request):
    """Each flavor that runs here in turn: what holds for one must hold for the other."""
    return request.getfixturevalue("server" if request.param == LOCAL else "cpu_server")


@pytest.fixture(scope="session")
def heldout(built):
    from scripts.demo import heldout_images

    images = heldout_images(built.heldout)
    if not images and os.environ.get("MODEL", DEMO_MODEL) != DEMO_MODEL:
        pytest.skip("no held-out images: the deployed model is not the demo model")
    assert images, "the build wrote no held-out images"
    return images
