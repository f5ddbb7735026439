"""Checks of the Caffe build that scripts/install_caffe.sh installs into the venv.

Caffe reports a failed CHECK by aborting the process, so every Caffe call runs in a
subprocess of this interpreter, and the test process itself never imports caffe.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[3]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_caffe.sh"
CAFFE_DIST = "brocolli-caffe"
CAFFE_VERSION = "9.0.2"
SUBPROCESS_TIMEOUT_S = 120

# GLOG_minloglevel=2 keeps Caffe's INFO and WARNING lines out of the subprocess output.
CAFFE_ENV = {**os.environ, "GLOG_minloglevel": "2"}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter of this venv, in `cwd`."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=CAFFE_ENV,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


@functools.cache
def installed_caffe_version() -> tuple[str | None, str]:
    """Return the installed brocolli-caffe version (None when `import caffe` fails) and the error."""
    result = run_python(
        f"""
        import importlib.metadata
        import caffe
        print(importlib.metadata.version({CAFFE_DIST!r}))
        """,
        cwd=Path("/"),
    )
    if result.returncode != 0:
        lines = (result.stderr.strip() or f"exit status {result.returncode}").splitlines()
        return None, lines[-1]
    return result.stdout.strip(), ""


def caffe_skip_reason() -> str:
    version, error = installed_caffe_version()
    if version is None:
        return f"import caffe failed ({error}); run scripts/install_caffe.sh to build and install Caffe"
    return ""


pytestmark = [
    pytest.mark.caffe,
    pytest.mark.skipif(bool(caffe_skip_reason()), reason=caffe_skip_reason()),
]

TINY_NET = """\
name: "tiny"
input: "data"
input_shape {{ dim: 2 dim: 3 dim: 9 dim: 9 }}
layer {{
  name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 stride: 1 }}
}}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{
  name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param {{ pool: {pool} kernel_size: 2 stride: 2 }}
}}
"""

FORWARD_SCRIPT = """
import sys

import numpy as np

import caffe

caffe.set_mode_cpu()
net = caffe.Net("net.prototxt", caffe.TEST)
net.params["conv"][0].data[...] = np.load("weight.npy")
net.params["conv"][1].data[...] = np.load("bias.npy")
net.blobs["data"].data[...] = np.load("input.npy")
outputs = net.forward()
np.save("output.npy", outputs["pool"])
"""


def reference_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, pool: str
) -> np.ndarray:
    """Compute Convolution + ReLU + Pooling with torch, using Caffe's ceil rounding of pooled sizes."""
    conv = F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), padding=1)
    relu = torch.relu(conv)
    if pool == "MAX":
        pooled = F.max_pool2d(relu, kernel_size=2, stride=2, ceil_mode=True)
    else:
        pooled = F.avg_pool2d(relu, kernel_size=2, stride=2, ceil_mode=True)
    return pooled.numpy()


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_tiny_net_forward_matches_torch(tmp_path: Path, pool: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    (tmp_path / "net.prototxt").write_text(TINY_NET.format(pool=pool))
    np.save(tmp_path / "input.npy", x)
    np.save(tmp_path / "weight.npy", weight)
    np.save(tmp_path / "bias.npy", bias)

    result = run_python(FORWARD_SCRIPT, cwd=tmp_path)

    assert result.returncode == 0, f"Caffe forward failed:\n{result.stderr}"
    output = np.load(tmp_path / "output.npy")
    expected = reference_forward(x, weight, bias, pool)
    # Caffe rounds the pooled size up, so 9 columns give ceil((9 - 2) / 2) + 1 = 5.
    assert output.shape == (2, 4, 5, 5)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


def test_prototxt_parses_with_caffe_pb2(tmp_path: Path) -> None:
    (tmp_path / "net.prototxt").write_text(TINY_NET.format(pool="MAX"))

    result = run_python(
        """
        import json

        from google.protobuf import text_format

        from caffe.proto import caffe_pb2

        net = text_format.Parse(open("net.prototxt").read(), caffe_pb2.NetParameter())
        parsed = caffe_pb2.NetParameter.FromString(net.SerializeToString())
        print(json.dumps({
            "types": [layer.type for layer in parsed.layer],
            "pool": caffe_pb2.PoolingParameter.PoolMethod.Name(parsed.layer[2].pooling_param.pool),
            "ceil_mode": parsed.layer[2].pooling_param.ceil_mode,
        }))
        """,
        cwd=tmp_path,
    )

    assert result.returncode == 0, f"caffe_pb2 failed:\n{result.stderr}"
    parsed = json.loads(result.stdout)
    assert parsed["types"] == ["Convolution", "ReLU", "Pooling"]
    assert parsed["pool"] == "MAX"
    assert parsed["ceil_mode"] is True


@pytest.mark.parametrize("order", [("torch", "caffe", "onnx"), ("caffe", "onnx", "torch")])
def test_torch_caffe_onnx_import_together(tmp_path: Path, order: tuple[str, str, str]) -> None:
    imports = "\n".join(f"import {name}" for name in order)
    result = run_python(
        imports
        + textwrap.dedent(
            """

            import json

            import onnx.helper

            graph = onnx.helper.make_graph(
                [onnx.helper.make_node("Relu", ["x"], ["y"])],
                "relu",
                [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
            )
            onnx.checker.check_model(onnx.helper.make_model(graph))
            relu = torch.relu(torch.tensor([-1.0, 2.0]))
            print(json.dumps({"layers": sorted(caffe.layer_type_list()), "relu": relu.tolist()}))
            """
        ),
        cwd=tmp_path,
    )

    assert result.returncode == 0, f"importing {', '.join(order)} failed:\n{result.stderr}"
    report = json.loads(result.stdout)
    assert report["relu"] == [0.0, 2.0]
    for layer_type in ["Input", "Convolution", "ReLU", "Pooling", "InnerProduct", "BatchNorm", "Scale", "Eltwise"]:
        assert layer_type in report["layers"]


@pytest.mark.slow
def test_install_script_rerun_exits_early() -> None:
    version, _ = installed_caffe_version()
    if version != CAFFE_VERSION:
        pytest.skip(f"{CAFFE_DIST} {version} is installed, the script would rebuild {CAFFE_VERSION}")

    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), sys.prefix],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )

    assert result.returncode == 0, f"install_caffe.sh failed:\n{result.stdout}\n{result.stderr}"
    assert "nothing to do" in result.stdout
    assert "install Debian build dependencies" not in result.stdout
