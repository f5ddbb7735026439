"""Find the fp32 and int8 ONNX files among a profile's export artifacts.

An export folder has ``model.onnx`` and ``input_contract.json``, whose
``precision`` is fp32 or int8. When the contract lacks it, a model with
QuantizeLinear or integer kernels counts as int8.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONTRACT_FILE = "input_contract.json"
# Ops that only a quantized model contains.
INT8_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd"}
)


@dataclass(frozen=True)
class OnnxExport:
    """One exported ONNX model: the stage that wrote it, its precision and file."""

    stage: str
    precision: str
    path: Path

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def find_onnx_exports(folders: list[Path], stage_names: list[str]) -> list[OnnxExport]:
    """Return the ONNX exports among ``folders``, in their order.

    Folders without ``model.onnx`` (a Caffe export) are skipped.
    """
    found = []
    for folder, stage in zip(folders, stage_names):
        model_path = Path(folder) / MODEL_FILE
        if not model_path.is_file():
            log.info("profile: export '%s' has no %s; not timed", stage, MODEL_FILE)
            continue
        found.append(OnnxExport(stage, export_precision(Path(folder)), model_path))
    return found


def export_precision(folder: Path) -> str:
    """Return ``"fp32"`` or ``"int8"`` from the contract, else from the ONNX ops."""
    contract_path = folder / CONTRACT_FILE
    if contract_path.is_file():
        precision = json.loads(contract_path.read_text()).get("precision")
        if precision in ("fp32", "int8"):
            return precision

    import onnx

    model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    return "int8" if ops & INT8_OPS else "fp32"


def first_of(exports: list[OnnxExport], precision: str) -> OnnxExport | None:
    """Return the first export of ``precision``; later ones are timed but not compared."""
    return next((export for export in exports if export.precision == precision), None)
