from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))  # the shapes dataset and reference training

pytest_plugins = ["trt_fixtures"]  # the `trt_fake` fixture: real TensorRT API surfaces (tests/trt_fake.py)

REFERENCE_MISSING = (
    "reference implementations not installed: pip install --no-deps effdet==0.4.1 timm==1.0.31 (see README)"
)


def _reference_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("timm", "effdet", "omegaconf"))


@pytest.fixture(autouse=True, scope="session")
def private_user_directories(tmp_path_factory):
    """No test writes to the user's real profile or cache directories (subprocesses inherit these too)."""
    patcher = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("user")
    for variable, name in (("EFFEDGE_PROFILE_DIR", "profiles"), ("EFFEDGE_CACHE_DIR", "cache")):
        if variable not in os.environ:
            patcher.setenv(variable, str(root / name))
    yield
    patcher.undo()


@pytest.fixture(scope="session")
def timm_module():
    if not _reference_installed():
        pytest.skip(REFERENCE_MISSING)
    import torchvision_standin

    torchvision_standin.install()
    import timm

    return timm


@pytest.fixture(scope="session")
def effdet_reference(timm_module):
    """(effdet.efficientdet module, get_efficientdet_config)."""
    import torchvision_standin

    module = torchvision_standin.import_effdet_model_module()
    from effdet.config import get_efficientdet_config

    return module, get_efficientdet_config
