"""The peer quantizers: torch.ao FX graph mode and onnxruntime's quantize_static.

Both are used only here, as references. torch.ao's FX quantization is
deprecated (PyTorch points to torchao's pt2e flow) but still ships in
torch 2.14.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

log = logging.getLogger(__name__)

# onnxruntime calibration methods tried; the best one by accuracy is kept.
ORT_METHODS = ("MinMax", "Entropy", "Percentile")


def fx_quantize(model: torch.nn.Module, example: torch.Tensor, calibration: Iterable[torch.Tensor]) -> torch.nn.Module:
    """Return ``model`` quantized with prepare_fx/convert_fx and the x86 default qconfig mapping."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model.eval(), get_default_qconfig_mapping("x86"), (example,))
        with torch.inference_mode():
            for batch in calibration:
                prepared(batch)
        return convert_fx(prepared)


class _Reader:
    """onnxruntime CalibrationDataReader over numpy batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = batches
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        batch = self.batches[self.position]
        self.position += 1
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.position = 0


def ort_quantize(fp32_path: Path, output_path: Path, batches: list[np.ndarray], method: str) -> Path:
    """Quantize an fp32 ONNX model with quantize_static and return the int8 model's path.

    Settings: quant_pre_process first, QDQ format, uint8 activations, int8
    per-channel weights, ``method`` calibration (MinMax, Entropy or Percentile).
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    preprocessed = output_path.with_name(f"{fp32_path.stem}.preprocessed.onnx")
    # Redo it when the fp32 export is newer, as after a rerun of the export stage.
    if not preprocessed.is_file() or preprocessed.stat().st_mtime < fp32_path.stat().st_mtime:
        quant_pre_process(str(fp32_path), str(preprocessed))
    input_name = onnx.load(str(preprocessed), load_external_data=False).graph.input[0].name

    reader: Any = _Reader(input_name, batches)
    # quantize_static prints its calibration progress; keep stdout for the results.
    with contextlib.redirect_stdout(sys.stderr):
        _quantize_static(preprocessed, output_path, reader, method)
    return output_path


def _quantize_static(preprocessed: Path, output_path: Path, reader: Any, method: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(preprocessed),
        str(output_path),
        reader,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=getattr(CalibrationMethod, method),
    )
