"""The input contract written next to an exported model.

It tells a deployer what to feed the model: input names, shapes (``batch``
for a dynamic batch dimension), layout, dtype, and the preprocessing the
data set applied before the model saw the data.
"""

from __future__ import annotations

from typing import Any, Mapping

import onnx

CONTRACT_VERSION = 1
LAYOUT = "NCHW"

# Factor each source multiplies raw values by before mean and std; the data
# loaders under stages/data apply these. None: the source defines its own range.
SOURCE_SCALES: dict[str, float | None] = {
    "digits": 1.0 / 16.0,
    "images": 1.0 / 255.0,
    "sample_photos": 1.0 / 255.0,
    "npy": 1.0,
    "random": None,
}

ELEMENT_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
}


def build_input_contract(
    model: onnx.ModelProto,
    precision: str,
    dataset_spec: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Describe the model's inputs, outputs and the expected preprocessing."""
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    return {
        "format_version": CONTRACT_VERSION,
        "format": "onnx",
        "precision": precision,
        "opset": opset,
        "inputs": [_describe_value(value, LAYOUT) for value in model.graph.input],
        "outputs": [_describe_value(value, None) for value in model.graph.output],
        "preprocessing": _preprocessing(dataset_spec),
    }


def _describe_value(value: onnx.ValueInfoProto, layout: str | None) -> dict[str, Any]:
    tensor_type = value.type.tensor_type
    shape: list[int | str] = []
    for dim in tensor_type.shape.dim:
        shape.append(dim.dim_param if dim.HasField("dim_param") else int(dim.dim_value))
    description: dict[str, Any] = {
        "name": value.name,
        "shape": shape,
        "dtype": ELEMENT_TYPE_NAMES.get(tensor_type.elem_type, str(tensor_type.elem_type)),
    }
    if layout is not None and len(shape) == len(layout):
        description["layout"] = layout
    return description


def _preprocessing(dataset_spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Return the data set's preprocessing: x = (raw * scale - mean) / std per channel."""
    if dataset_spec is None:
        return None
    source = str(dataset_spec["source"])
    return {
        "source": source,
        "scale": SOURCE_SCALES.get(source),
        "mean": dataset_spec.get("mean"),
        "std": dataset_spec.get("std"),
        "resize": dataset_spec.get("resize"),
        "image_size": dataset_spec.get("image_size"),
    }
