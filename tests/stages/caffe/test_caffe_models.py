"""torchvision classifiers (random weights) exported to Caffe match PyTorch in pycaffe.

BatchNorm statistics are re-estimated on random inputs so that activations
stay near unit scale through the depth of the net, and BatchNorm is folded
into the convolutions as the export stage does by default. Inputs are as
small as each architecture allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from caffe_helpers import export_and_run, reestimate_batchnorm, requires_caffe

pytestmark = [pytest.mark.caffe, pytest.mark.slow, requires_caffe]

MAX_REL_DIFF = 1e-4
# Input side per model: 64 unless the architecture needs otherwise. VGG's
# classifier takes 7 x 7: from 32 x 32 its features are 1 x 1, which
# adaptive pooling replicates (a nearest Upsample in Caffe).
INPUT_SIDES = {
    "alexnet": 64,
    "vgg11": 32,
    "resnet18": 64,
    "resnet50": 64,
    "squeezenet1_0": 64,
    "googlenet": 64,
    "mobilenet_v2": 64,
    "mobilenet_v3_small": 64,
    "shufflenet_v2_x1_0": 64,
    "densenet121": 64,
    "mnasnet0_5": 64,
    "regnet_y_400mf": 64,
    "efficientnet_b0": 64,
}
EXTRA_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True}}
EXPECTED_LAYERS = {
    "resnet18": {"Convolution", "Pooling", "Eltwise", "InnerProduct"},
    "squeezenet1_0": {"Concat", "Pooling"},
    "mobilenet_v3_small": {"HardSwish", "HardSigmoid", "Scale"},
    "shufflenet_v2_x1_0": {"Slice", "Permute", "Reshape"},
    "efficientnet_b0": {"Sigmoid", "Eltwise", "Scale"},
    "vgg11": {"Upsample"},
}


@pytest.mark.parametrize("name", sorted(INPUT_SIDES))
def test_torchvision_model_matches_in_pycaffe(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **EXTRA_KWARGS.get(name, {}))
    side = INPUT_SIDES[name]
    reestimate_batchnorm(model, (4, 3, side, side))
    inputs = torch.randn((2, 3, side, side), generator=torch.Generator().manual_seed(2))

    run = export_and_run(model, inputs, tmp_path, fold=True)

    rel = run.max_rel_diff()
    divergence = run.first_divergence(MAX_REL_DIFF)
    assert rel <= MAX_REL_DIFF, f"max_rel_diff={rel:.3g}; {divergence.describe() if divergence else ''}"
    assert run.outputs[0].shape == (2, 1000)
    assert EXPECTED_LAYERS.get(name, set()) <= set(run.layer_types())
    assert "BatchNorm" not in run.layer_types() or name == "densenet121"
