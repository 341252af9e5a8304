"""Shared fixtures."""

import pytest
import torch

from _micro import make_bundle


@pytest.fixture
def micro_bundle():
    return make_bundle()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield
