"""Run a Caffe model in pycaffe: ``python -m stages.caffe.runner REQUEST.json``.

This module runs in its own process, because a failed Caffe CHECK aborts
the process that hosts Caffe. It imports caffe and numpy only, never torch.

The request names the prototxt, the caffemodel, an ``.npy`` file of inputs
(whole batches of the net's input shape, stacked) and the result file. The
result is an ``.npz`` of arrays ``arr_0``, ``arr_1``, ... and a JSON file
beside it listing their blob names: the requested output blobs of every
batch stacked along axis 0, or with ``all_blobs`` every blob of the net for
the inputs (one batch).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Exit status when `import caffe` fails, so the caller can tell a missing build from a crash.
EXIT_NO_CAFFE = 3


def run(request: dict[str, Any]) -> None:
    import numpy as np

    try:
        import caffe
    except ImportError as exc:
        print(f"import caffe failed: {exc}", file=sys.stderr)
        sys.exit(EXIT_NO_CAFFE)

    caffe.set_mode_cpu()
    net = caffe.Net(request["prototxt"], caffe.TEST, weights=request["caffemodel"])
    input_name = net.inputs[0]
    batch_size = net.blobs[input_name].data.shape[0]
    inputs = np.load(request["inputs"])
    if len(inputs) % batch_size:
        raise ValueError(f"{len(inputs)} inputs do not fill whole batches of {batch_size}")

    names: list[str] = list(net.blobs) if request.get("all_blobs") else list(request["outputs"])
    collected: dict[str, list[Any]] = {name: [] for name in names}
    for start in range(0, len(inputs), batch_size):
        net.blobs[input_name].data[...] = inputs[start : start + batch_size]
        net.forward()
        for name in names:
            collected[name].append(np.array(net.blobs[name].data, dtype=np.float32, copy=True))

    arrays = [np.concatenate(collected[name]) for name in names]
    result = Path(request["result"])
    np.savez(result, *arrays)
    result.with_suffix(".json").write_text(json.dumps(names))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.caffe.runner REQUEST.json")
    run(json.loads(Path(sys.argv[1]).read_text()))


if __name__ == "__main__":
    main()
