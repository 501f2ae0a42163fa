"""Shared fixtures: the committed bundle, a built project, and a real tritonserver on free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.build import Builder, Layout
from scripts.config import load_bundle
from scripts.serve import LocalServer, free_ports, prepare_backends

PROJECT = Path(__file__).resolve().parent.parent
REPOSITORY = PROJECT / "model_repository"
BUILD_DIR = PROJECT / "build"


@pytest.fixture(scope="session")
def bundle():
    return load_bundle(REPOSITORY)


@pytest.fixture(scope="session")
def built():
    """The project's own build (the same one `make build` makes; a no-op when up to date).

    $MODEL (the compose `verify` service passes the deployed one) keeps a bring-your-own model's build.
    """
    layout = Layout(REPOSITORY, BUILD_DIR)
    Builder(layout, model=os.environ.get("MODEL", "demo"), progress=lambda message: None).run()
    return layout


@pytest.fixture(scope="session")
def server(built, tmp_path_factory):
    http, grpc, metrics = free_ports(3)
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with LocalServer(built.flavor("local"), prepare_backends(built.backends), http, grpc, metrics, log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def heldout(built):
    from scripts.demo import heldout_images

    images = heldout_images(built.heldout)
    if not images and os.environ.get("MODEL", "demo") != "demo":
        pytest.skip("no held-out images: the deployed model is not the demo model")
    assert images, "the build wrote no held-out images"
    return images
