"""Shared fixtures: the committed bundle, a built project, and a real tritonserver on free ports."""

from __future__ import annotations

import os

import pytest

from scripts.build import Builder
from scripts.config import load_bundle
from scripts.constants import DEMO_MODEL
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
    Builder(layout, model=os.environ.get("MODEL", DEMO_MODEL), progress=lambda message: None).run()
    return layout


@pytest.fixture(scope="session")
def server(built, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with local_server(built, log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def heldout(built):
    from scripts.demo import heldout_images

    images = heldout_images(built.heldout)
    if not images and os.environ.get("MODEL", DEMO_MODEL) != DEMO_MODEL:
        pytest.skip("no held-out images: the deployed model is not the demo model")
    assert images, "the build wrote no held-out images"
    return images
