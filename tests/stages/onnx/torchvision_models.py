"""The 17 torchvision classifiers of the export tests, with random weights and usable BatchNorm statistics."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

# Smallest square input each model accepts (checked with torch); 64 for most convnets.
INPUT_SIZES: dict[str, int] = {
    "resnet18": 64,
    "resnet50": 64,
    "mobilenet_v2": 64,
    "mobilenet_v3_small": 64,
    "efficientnet_b0": 64,
    "shufflenet_v2_x1_0": 64,
    "squeezenet1_0": 64,
    "densenet121": 64,
    "googlenet": 64,
    "inception_v3": 75,
    "regnet_y_400mf": 64,
    "mnasnet0_5": 64,
    "alexnet": 64,
    "vgg11": 64,
    "convnext_tiny": 64,
    "vit_b_16": 224,
    "swin_t": 64,
}
MODEL_NAMES = tuple(INPUT_SIZES)
# Keyword arguments that drop training-only branches.
MODEL_KWARGS: dict[str, dict] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
BATCHNORM_BATCHES = 3


def build_model(name: str, seed: int = 0, image_size: int | None = None) -> tuple[nn.Module, list[int]]:
    """Return the model in eval mode and its input shape (batch 1).

    Random-weight BatchNorm layers start with mean 0 and variance 1, which
    blows activations up layer after layer; a few seeded random batches in
    train mode re-estimate the running statistics so outputs stay in range.
    """
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, **MODEL_KWARGS.get(name, {}))
    size = image_size or INPUT_SIZES[name]
    if name == "vit_b_16":
        # torchvision starts the ViT head at zero, which makes every output 0.
        nn.init.normal_(model.heads.head.weight, std=0.02)
    batchnorms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if batchnorms:
        for module in batchnorms:
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches
        model.train()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _ in range(BATCHNORM_BATCHES):
                model(torch.randn(4, 3, size, size, generator=generator))
    return model.eval(), [1, 3, size, size]
