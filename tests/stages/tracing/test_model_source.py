"""build_model and model_source_file: torchvision names, user modules, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.errors import StageError
from stages.tracing.source import build_model, model_source_file

USER_MODULE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def build(width: int = 4) -> nn.Module:
    return Tiny(width)
'''


@pytest.fixture
def user_root(tmp_path: Path) -> Path:
    package = tmp_path / "zoo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tiny_net.py").write_text(USER_MODULE)
    return tmp_path


def test_torchvision_model_is_built_in_eval_mode() -> None:
    model = build_model({"source": "torchvision:resnet18", "kwargs": {"num_classes": 7}}, Path("."))

    assert not model.training
    assert model.fc.out_features == 7


def test_torchvision_weights_kwarg_rejected() -> None:
    with pytest.raises(StageError, match="checkpoint"):
        build_model({"source": "torchvision:resnet18", "kwargs": {"weights": "DEFAULT"}}, Path("."))


def test_unknown_torchvision_name_rejected() -> None:
    with pytest.raises(StageError, match="list_models"):
        build_model({"source": "torchvision:no_such_net", "kwargs": {}}, Path("."))


def test_user_callable_with_kwargs(user_root: Path) -> None:
    model = build_model({"source": "zoo.tiny_net:build", "kwargs": {"width": 6}}, user_root)

    assert model.conv.out_channels == 6


def test_model_source_file_resolves_module(user_root: Path) -> None:
    assert model_source_file("zoo.tiny_net:Tiny", user_root) == user_root / "zoo" / "tiny_net.py"
    assert model_source_file("zoo:anything", user_root) == user_root / "zoo" / "__init__.py"
    assert model_source_file("torchvision:resnet18", user_root) is None


def test_missing_module_file_names_expected_path(user_root: Path) -> None:
    with pytest.raises(StageError, match="missing_mod.py"):
        model_source_file("missing_mod:build", user_root)


@pytest.mark.parametrize("wrapper_key", [None, "state_dict", "model"])
def test_checkpoint_is_loaded(user_root: Path, wrapper_key: str | None) -> None:
    reference = build_model({"source": "zoo.tiny_net:build", "kwargs": {}}, user_root)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.uniform_(-1, 1)
    state = reference.state_dict()
    torch.save(state if wrapper_key is None else {wrapper_key: state, "epoch": 3}, user_root / "tiny.pt")

    model = build_model({"source": "zoo.tiny_net:build", "kwargs": {}, "checkpoint": "tiny.pt"}, user_root)

    example = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(example), reference(example), rtol=0, atol=0)


def test_mismatched_checkpoint_names_file(user_root: Path) -> None:
    torch.save(nn.Linear(2, 2).state_dict(), user_root / "other.pt")

    with pytest.raises(StageError, match="other.pt does not match the model"):
        build_model({"source": "zoo.tiny_net:build", "kwargs": {}, "checkpoint": "other.pt"}, user_root)


def test_missing_checkpoint_rejected(user_root: Path) -> None:
    with pytest.raises(StageError, match="not found"):
        build_model({"source": "zoo.tiny_net:build", "kwargs": {}, "checkpoint": "absent.pt"}, user_root)
