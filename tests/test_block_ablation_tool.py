"""tools/int8_block_ablation.py: the paired difference to fp32 it reports, in mAP points."""
import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "int8_block_ablation.py"


def test_difference_to_fp32_is_in_points_with_the_standard_error_of_the_folds():
    spec = importlib.util.spec_from_file_location("int8_block_ablation", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    mean, error = tool.paired([0.80, 0.82], [0.81, 0.84])  # −1 and −2 points: the int8 side below fp32
    assert mean == pytest.approx(-1.5)
    assert error == pytest.approx(0.5)  # sample standard deviation 0.707 over √2 folds
    assert tool.paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == (0.0, 0.0)
