"""Shared fixtures: tiny random SD pipelines (epsilon and v-prediction) and reference folders."""

from __future__ import annotations

import pytest
import torch

from dreamdist.backbones import Backbone
from dreamdist.testing import save_tiny_pipeline, write_images

# one thread: the CI machine has two cores, and tiny models gain nothing from more
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A saved epsilon-prediction tiny pipeline folder."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_eps"), prediction_type="epsilon", seed=0)


@pytest.fixture(scope="session")
def tiny_model_v(tmp_path_factory):
    """A saved v-prediction tiny pipeline folder."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_v"), prediction_type="v_prediction", seed=0)


@pytest.fixture(scope="session")
def other_model(tmp_path_factory):
    """Same shapes as ``tiny_model``, different random weights (a 'different backbone')."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_other"), seed=123)


@pytest.fixture(scope="session")
def backbone(tiny_model):
    return Backbone.from_pretrained(tiny_model, device="cpu")


@pytest.fixture
def refs(tmp_path):
    return write_images(tmp_path / "refs", 5)
