"""Reading and writing the torch artifacts that stages pass to each other.

A model artifact folder holds ``model.pt`` (a pickled ``torch.fx.GraphModule``)
and ``meta.json`` (at least ``input_shape``, the example input's shape).

NOTE: [Pickles] ``model.pt`` is a pickle. The engine checks an artifact's
digest against its manifest before a stage reads it, so only entries written
by this cache are ever unpickled.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MODEL_FILE = "model.pt"
META_FILE = "meta.json"


def save_model(model: Any, folder: Path, meta: dict[str, Any]) -> None:
    """Write a GraphModule and its metadata into an artifact folder."""
    import torch

    torch.save(model, folder / MODEL_FILE)
    write_json(folder / META_FILE, meta)


def load_model(folder: Path, root: Path | None = None) -> Any:
    """Load the GraphModule of a model artifact.

    ``root`` is the pipeline file's folder: a model whose leaf modules come
    from a user's module next to the pipeline file needs it on ``sys.path``.
    """
    import torch

    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    model = torch.load(folder / MODEL_FILE, weights_only=False)
    model.eval()
    return model


def load_meta(folder: Path) -> dict[str, Any]:
    return read_json(folder / META_FILE)


def write_json(path: Path, data: Any) -> None:
    """Write JSON with sorted keys, so equal data gives equal bytes."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
