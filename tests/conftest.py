"""Shared fixtures: `tiny_cfg` (the tiny track's config with a seed) and the `gpu` marker.

Tests marked `@pytest.mark.gpu` are skipped on machines without CUDA (CI here has none), through
`pytest_collection_modifyitems`, so the marker alone is enough in a test file.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the package is used from the checkout, not installed
    sys.path.insert(0, str(REPO))

_CFG_CACHE: dict = {}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_cfg() -> dict:
    """The tiny track's config (`config/config.yaml` + `config/tiny.yaml`: backend tiny, random
    weights, the DreamBooth subjects) with `seed` 0; a fresh copy per test."""
    if "cfg" not in _CFG_CACHE:
        from db3d.config import DEFAULT_CONFIG_PATH, load_config

        cfg = load_config([DEFAULT_CONFIG_PATH, DEFAULT_CONFIG_PATH.parent / "tiny.yaml"])
        cfg["seed"] = 0
        _CFG_CACHE["cfg"] = cfg
    return copy.deepcopy(_CFG_CACHE["cfg"])
