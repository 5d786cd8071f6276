"""BitFit (Ben Zaken et al., 2022): train every bias term of the backbone and nothing else.

Biases are found structurally: each module's own `bias` parameter (linear, conv and norm layers).
"""
from torch import nn

from petlbench.method import Method


class BitFit(Method):
    name = "bitfit"
    description = "train all bias terms (linear, conv and norm layers)"
    train_defaults = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def apply(self, model):
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.requires_grad_(True)
        return model
