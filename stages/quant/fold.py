"""BatchNorm folding: an fx pass that merges Conv2d -> BatchNorm2d into one Conv2d.

With s = gamma / sqrt(running_var + eps):
    w' = w * s (per output channel)
    b' = (b - running_mean) * s + beta
computed in float64 and stored as float32. The folded model computes the
eval-mode output of the original to float32 rounding.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
from torch import fx, nn

log = logging.getLogger(__name__)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new Conv2d that computes bn(conv(x)) with eval-mode statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"BatchNorm2d {bn} has no running statistics to fold")

    mean = bn.running_mean.detach().to(torch.float64)
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    bias = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(mean)
    factor = gamma / torch.sqrt(var + bn.eps)

    folded = copy.deepcopy(conv)
    weight = conv.weight.detach().to(torch.float64) * factor.reshape(-1, 1, 1, 1)
    folded.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    folded.bias = nn.Parameter(((bias - mean) * factor + beta).to(conv.weight.dtype), requires_grad=False)
    return folded


def fold_batchnorm(gm: fx.GraphModule) -> tuple[fx.GraphModule, dict[str, str]]:
    """Fold every BatchNorm2d that directly follows a Conv2d in a copy of ``gm``.

    Folds only when the conv output feeds the BatchNorm alone and the conv
    module is called at one place, so no other value changes. Returns the
    folded copy and a map from each folded conv node to the BatchNorm node
    it absorbed; node names are kept.
    """
    gm = copy.deepcopy(gm)
    modules = dict(gm.named_modules())
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    folded: dict[str, str] = {}

    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        foldable = (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1
            and calls[source.target] == 1
            and modules[node.target].running_mean is not None
        )
        if not foldable:
            log.info("BatchNorm %s stays unfolded: it does not follow a conv used only by it", node.name)
            continue

        _set_submodule(gm, source.target, fold_conv_bn(modules[source.target], modules[node.target]))
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        folded[source.name] = node.name

    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, folded


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)
