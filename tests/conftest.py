"""Shared fixtures and settings for the test suite."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import settings

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)

settings.register_profile("ci", max_examples=40, deadline=None)
settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    """Skip CUDA-marked tests cleanly where no GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def random_symmetric_affinity(rng: np.random.Generator, n: int, density: float = 1.0):
    """A random symmetric non-negative affinity with zero diagonal."""
    W = rng.random((n, n)) * (rng.random((n, n)) < density)
    A = np.triu(W, 1)
    return A + A.T
