"""Shared test fixtures: paths to the real samples in ../shared/data (skipped when absent)."""

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def _shared_dir(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data sample {path} is absent (research-only data, not in the repo)")
    return path


@pytest.fixture
def ccp_root() -> Path:
    """Clothing Co-Parsing subset in LIP layout (train 804 / val 100, 59 classes)."""
    return _shared_dir("ccp")


@pytest.fixture
def lip_sample_root() -> Path:
    """Three real LIP val pairs (one greyscale image)."""
    return _shared_dir("lip_sample")


@pytest.fixture
def cihp_sample_root() -> Path:
    """Four real CIHP pairs in LIP layout (val split)."""
    return _shared_dir("cihp_sample")
