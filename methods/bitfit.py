"""BitFit (Ben Zaken et al., 2022): train every bias term of the backbone and nothing else.

Biases are found structurally: each module's own `bias` parameter (linear, conv and norm layers).
"""
from torch import nn

from petlbench.method import Method


class BitFit(Method):
    name = "bitfit"
    description = "train all bias terms (linear, conv and norm layers)"
    recipe = "vpt"  # the VTAB-1k BitFit numbers come from VPT's Table 1

    def apply(self, model):
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.requires_grad_(True)
        return model
