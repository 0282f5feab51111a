"""Shared test fixtures: paths to the real sample data and a seeded random generator.

Keep this small and generic; add fixtures with a short docstring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The repository's ``sample_data/`` folder (real images with their licences)."""
    return SAMPLE_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    """A NumPy generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(20240611)


@pytest.fixture(scope="session")
def wbc_cell():
    """One real white-blood-cell image (dataset 2, 300 x 300 RGB uint8), labels and meta."""
    from napari_resolve.data.samples import wbc

    return wbc(2, ids=[1])[0]


@pytest.fixture(autouse=True, scope="session")
def _runtime_cache(tmp_path_factory):
    """Exported graphs and runtime calibrations go to a temporary folder, not ~/.cache."""
    import os

    old = os.environ.get("NAPARI_RESOLVE_CACHE")
    os.environ["NAPARI_RESOLVE_CACHE"] = str(tmp_path_factory.mktemp("runtime-cache"))
    yield
    if old is None:
        os.environ.pop("NAPARI_RESOLVE_CACHE", None)
    else:
        os.environ["NAPARI_RESOLVE_CACHE"] = old
