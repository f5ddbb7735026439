from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import StageError
from stages.data import dataset_files, load_dataset


def test_npy_inputs_only(tmp_path: Path) -> None:
    inputs = np.random.default_rng(0).random((20, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", inputs)
    dataset = load_dataset({"source": "npy", "path": "x.npy"}, tmp_path)
    assert dataset.labels is None
    np.testing.assert_array_equal(dataset.inputs, inputs)
    assert dataset_files({"source": "npy", "path": "x.npy"}, tmp_path) == [(tmp_path / "x.npy").resolve()]


def test_npz_with_labels_split_and_normalize(tmp_path: Path) -> None:
    inputs = np.random.default_rng(0).random((40, 2, 3, 3))
    labels = np.repeat([0, 1], 20)
    np.savez(tmp_path / "d.npz", inputs=inputs, labels=labels)
    spec = {"source": "npy", "path": "d.npz", "split": "test", "test_size": 10, "mean": [0.5, 0.1], "std": [2.0, 4.0]}
    dataset = load_dataset(spec, tmp_path)
    assert len(dataset) == 10
    assert np.bincount(dataset.labels).tolist() == [5, 5]

    # Find each selected sample among the originals and check its normalization.
    mean = np.array([0.5, 0.1]).reshape(1, 2, 1, 1)
    std = np.array([2.0, 4.0]).reshape(1, 2, 1, 1)
    expected = ((inputs - mean) / std).astype(np.float32)
    for row, label in zip(dataset.inputs, dataset.labels):
        match = [index for index in range(40) if np.allclose(expected[index], row, atol=1e-6)]
        assert len(match) == 1
        assert labels[match[0]] == label


def test_npz_without_inputs_raises(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 1, 2, 2)))
    with pytest.raises(StageError, match="data set 'calib'.*no 'inputs'"):
        load_dataset({"source": "npy", "path": "d.npz"}, tmp_path, "calib")


def test_npy_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="not found; check path"):
        load_dataset({"source": "npy", "path": "missing.npy"}, tmp_path)


def test_npz_bad_labels_raise(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.zeros((4, 1, 2, 2)), labels=np.zeros(3, dtype=np.int64))
    with pytest.raises(StageError, match=r"labels .* expected integers of shape \(4,\)"):
        load_dataset({"source": "npy", "path": "d.npz"}, tmp_path)


def test_module_callable_source(tmp_path: Path) -> None:
    (tmp_path / "make_blobs_data.py").write_text(
        "import numpy as np\n"
        "def make(count, channels=1):\n"
        "    inputs = np.arange(count * channels * 4, dtype=np.float64).reshape(count, channels, 2, 2)\n"
        "    return inputs, np.arange(count) % 2\n"
    )
    spec = {"source": "make_blobs_data:make", "kwargs": {"count": 6, "channels": 2}}
    dataset = load_dataset(spec, tmp_path)
    assert dataset.inputs.dtype == np.float32
    np.testing.assert_array_equal(dataset.inputs, np.arange(48, dtype=np.float32).reshape(6, 2, 2, 2))
    assert dataset.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert dataset_files(spec, tmp_path) == [(tmp_path / "make_blobs_data.py").resolve()]


def test_module_callable_reloads_same_name_from_other_folder(tmp_path: Path) -> None:
    for folder, value in (("a", 1.0), ("b", 2.0)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same_name_data.py").write_text(
            f"import numpy as np\ndef make():\n    return np.full((2, 1, 1, 1), {value}), None\n"
        )
    first = load_dataset({"source": "same_name_data:make"}, tmp_path / "a")
    second = load_dataset({"source": "same_name_data:make"}, tmp_path / "b")
    assert first.inputs[0, 0, 0, 0] == 1.0
    assert second.inputs[0, 0, 0, 0] == 2.0
    sys.modules.pop("same_name_data", None)


def test_module_callable_errors(tmp_path: Path) -> None:
    (tmp_path / "bad_data.py").write_text("def make():\n    return [1, 2, 3]\n")
    with pytest.raises(StageError, match="expected a tuple"):
        load_dataset({"source": "bad_data:make"}, tmp_path)
    with pytest.raises(StageError, match="has no callable 'missing'"):
        load_dataset({"source": "bad_data:missing"}, tmp_path)
    with pytest.raises(StageError, match="module 'no_such_module_here' not found"):
        load_dataset({"source": "no_such_module_here:make"}, tmp_path)


def test_random_source_matches_numpy(tmp_path: Path) -> None:
    dataset = load_dataset({"source": "random", "seed": 3, "kwargs": {"shape": [5, 3, 2, 2]}}, tmp_path)
    expected = np.random.default_rng(3).standard_normal((5, 3, 2, 2), dtype=np.float32)
    np.testing.assert_array_equal(dataset.inputs, expected)
    assert dataset.labels is None


def test_random_source_without_shape_raises(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="kwargs.shape is missing"):
        load_dataset({"source": "random"}, tmp_path)
