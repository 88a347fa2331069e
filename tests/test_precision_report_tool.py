"""tools/precision_report.py: the fp32 baseline its "calibration ÷ fp32 forwards" ratio divides by."""
import importlib.util
from pathlib import Path

import onnx
from helpers import photo_folder, tiny_model

from effedge.quantize.images import ImageSet

TOOL = Path(__file__).resolve().parents[1] / "tools" / "precision_report.py"


def test_fp32_forwards_run_in_a_default_session(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("precision_report", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    onnx.save(tiny_model(1), str(tmp_path / "tiny.onnx"))
    images = ImageSet.from_folder(photo_folder(tmp_path / "images", 3, (40, 32)), holdout=1)
    opened = []
    real = tool.ort_session

    def recording(model, *args, **kwargs):
        opened.append(kwargs)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(tool, "ort_session", recording)
    assert tool.time_fp32_forwards(tmp_path / "tiny.onnx", images) > 0
    # plain forwards, as a user runs them: calibration's own session options (priority order, no memory
    # patterns, about 15 % slower a forward) would inflate the denominator and flatter the ratio
    assert opened == [{}]
