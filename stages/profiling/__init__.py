"""Size, MACs and latency of models in PyTorch and onnxruntime, and the CPU they ran on."""

from __future__ import annotations
